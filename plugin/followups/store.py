"""``BackgroundStore``: bounded task records, one pending notification per finished task, and
lifecycle events for a UI. Synchronous and thread-safe."""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

import anyio
import anyio.lowlevel
import trio

from .relay import OutputRelay
from .settings import FollowupSettings
from .state import (
    BackgroundTask,
    LifecycleEvent,
    TaskFinished,
    TaskNotification,
    TaskStarted,
    TaskState,
    TaskStatus,
    make_notification,
)
from .truncation import head_cap
from .wakeup import LoopWaiter

__all__ = ["DEFAULT_CANCEL_REASON", "BackgroundStore", "Cancellable", "UISink"]

logger = logging.getLogger("followups.store")

DEFAULT_CANCEL_REASON = "cancelled — session switched"

# Enum members as module constants: a class attribute lookup on an Enum costs ~10x more, and
# these sit on the notify path.
_RUNNING = TaskStatus.RUNNING
_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED
MAX_TASK_ID_CHARS = 256


class Cancellable(Protocol):
    """Anything :meth:`BackgroundStore.attach_handle` accepts: an anyio or trio ``CancelScope``,
    an ``asyncio.Task``, a ``concurrent.futures.Future``…"""

    def cancel(self) -> Any: ...


UISink = Callable[[LifecycleEvent], object] | Any
"""A memory send stream/channel (anything with ``send_nowait``) or a callable."""


class _Record:
    __slots__ = ("description", "generation", "handle", "queued", "report", "sealed", "state")

    def __init__(self, description: str, queued: bool, generation: int) -> None:
        self.state = TaskState.running()
        self.description = description
        self.queued = queued
        self.generation = generation
        self.handle: Cancellable | None = None
        self.sealed = False  # finished by cancel_all: late notifies are ignored
        self.report: tuple[TaskStatus, int] | None = None  # identifies the last state notified


class BackgroundStore:
    """Records of background tasks, a queue of their pending notifications, and UI events.

    **Records.** At most ``settings.capacity`` records are kept. Inserting a new id into a full
    store evicts the record that finished longest ago; only when every record is live (running
    or queued) is the oldest live one evicted, and its handle cancelled, since its result could
    no longer be recorded. :meth:`get` never changes anything.

    **Notifications.** A task's first final state queues one notification; later ones update
    it in place, keeping its place in finish order. Notifications are snapshots: a finished
    task evicted before the drain is still delivered. Completed texts go through the
    :class:`OutputRelay`; error and cancel texts through :func:`head_cap`.

    **Events.** ``ui_sink`` (a memory send stream or channel, or a callable) receives
    :class:`TaskStarted` and :class:`TaskFinished`. It is called on the thread that caused the
    event, outside the store's lock; with a memory stream, cause events only from that
    stream's event loop thread. A closed, full or failing sink is logged and otherwise ignored:
    it never loses a notification.

    **Concurrency.** Every method may be called from any thread and any trio or asyncio task at
    once; each is atomic, and none blocks for long (relay file writes happen outside the lock).
    Insert, notify, eviction and de-duplication are O(1).
    """

    def __init__(
        self,
        settings: FollowupSettings | None = None,
        *,
        ui_sink: UISink | None = None,
        relay: OutputRelay | None = None,
    ) -> None:
        self.settings = settings or FollowupSettings()
        self.relay = relay or OutputRelay(self.settings)
        self._emit_to_sink = _sink_caller(ui_sink)
        # Within these, a completed text is inline whatever its encoding (UTF-8 <= 4 bytes a char).
        self._quick_inline_chars = self.settings.relay_inline_max_bytes // 4
        self._quick_max_lines = self.settings.relay_max_lines
        self._max_error_chars = self.settings.max_error_chars
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._live: OrderedDict[str, None] = OrderedDict()  # by insertion
        self._finished: OrderedDict[str, None] = OrderedDict()  # by first finish
        self._pending: OrderedDict[str, TaskNotification] = OrderedDict()
        self._running = 0
        self._generation = 0
        self._sequence = 0
        self._cleared_through = 0  # notifications up to this sequence were cleared by cancel_all
        self._waiters: set[LoopWaiter] = set()

    # -- records ---------------------------------------------------------------------------

    def insert(self, id: str, *, description: str = "", queued: bool = False) -> None:
        """Register task ``id`` as running (or, with ``queued=True``, as waiting for a slot).

        Re-inserting an existing id evicts nothing: it resets that task to a fresh live
        record (newest among the live ones) and cancels the previous run's handle. A task's
        pending notification, if any, stays queued.

        Raises ``ValueError`` for an id that is empty, longer than 256 characters or holds
        control characters.
        """
        if type(id) is not str or not 0 < len(id) <= MAX_TASK_ID_CHARS or not id.isprintable():
            _reject_task_id(id)
        with self._lock:
            self._generation += 1
            record = self._records.get(id)
            if record is not None:
                self._forget_order(id, record)
                to_cancel = record.handle
            elif len(self._records) >= self.settings.capacity:
                to_cancel = self._evict_one()
            else:
                to_cancel = None
            self._records[id] = _Record(description, queued, self._generation)
            self._live[id] = None
            if not queued:
                self._running += 1
        if to_cancel is not None:
            _cancel_handles([to_cancel])

    def get(self, id: str) -> BackgroundTask | None:
        """A snapshot of task ``id``, or None if it is unknown or was evicted. Read-only."""
        with self._lock:
            record = self._records.get(id)
            if record is None:
                return None
            return BackgroundTask(id, record.state, record.description, record.queued)

    def notify_started(self, id: str) -> bool:
        """Mark a live task as running (it leaves the queue for a slot) and emit
        :class:`TaskStarted`. Does nothing, and returns False, for an unknown or finished task."""
        with self._lock:
            record = self._records.get(id)
            if record is None or record.state.is_finished:
                return False
            if record.queued:
                record.queued = False
                self._running += 1
        self._emit(TaskStarted(id))
        return True

    def notify(self, id: str, state: TaskState) -> bool:
        """Record task ``id``'s final ``state`` and queue its notification.

        A later notify with a different state updates the task: its pending notification is
        updated in place, or, if it was already drained, queued again so the change is seen.
        A notify that repeats the task's last notified state is a no-op, so a duplicate report
        is never delivered twice. So are a running state, an unknown or evicted id, and a task
        that :meth:`cancel_all` finished: no queue entry, no event. The return value says
        whether anything happened.

        The text is bounded first (relayed or capped) without holding the lock; if the task is
        evicted or re-inserted meanwhile, the notify is dropped as stale.
        """
        if type(state) is not TaskState:
            raise TypeError(f"state must be a TaskState, got {type(state).__name__}")
        status = state.status
        if status is _RUNNING:
            return False
        text = state.text
        report = (status, hash(text))
        # A quick, conservative test that bounding cannot change the text (UTF-8 needs at most
        # 4 bytes a character); when it fails, the relay or the cap decides exactly.
        if (
            len(text) > self._quick_inline_chars or text.count("\n") >= self._quick_max_lines
            if status is _COMPLETED
            else len(text) > self._max_error_chars
        ):
            with self._lock:
                record = self._records.get(id)
                if record is None or record.sealed or record.report == report:
                    return False
                generation = record.generation
            state = self._bound(id, state)
        else:
            generation = None
        with self._lock:
            record = self._records.get(id)
            if record is None or record.sealed or record.report == report:
                return False
            if generation is not None and record.generation != generation:
                return False  # re-inserted while the text was being bounded: a stale report
            record.report = report
            if record.state.status is _RUNNING:
                self._finish(id, record, state)
            else:
                record.state = state
            queued = self._pending.get(id)
            if queued is None:
                self._sequence += 1
                notification = make_notification(id, state, self._sequence)
            else:
                notification = make_notification(id, state, queued.sequence)
            self._pending[id] = notification
            waiters = self._take_waiters() if self._waiters else None
        if self._emit_to_sink is not None:
            self._emit(TaskFinished(notification))
        if waiters:
            _wake(waiters)
        return True

    def attach_handle(self, id: str, handle: Cancellable) -> None:
        """Keep ``handle`` so that :meth:`cancel_all` can cancel task ``id``.

        A previous handle of the same task is cancelled. For an unknown id this does nothing,
        and for a finished task the handle is not kept (there is nothing left to cancel).
        """
        if not callable(getattr(handle, "cancel", None)):
            raise TypeError(f"handle must have a cancel() method, got {type(handle).__name__}")
        with self._lock:
            record = self._records.get(id)
            if record is None or record.state.is_finished:
                return
            previous, record.handle = record.handle, handle
        if previous is not None and previous is not handle:
            _cancel_handles([previous])

    def cancel_all(self, reason: str = DEFAULT_CANCEL_REASON) -> list[str]:
        """End the session's background work: cancel every attached handle, mark every live
        task cancelled with ``reason``, clear the pending queue, and emit :class:`TaskFinished`
        for each task cancelled. Returns the ids of the tasks it cancelled.

        Notifications drained before the call are not restored by a later
        :meth:`restore_notifications`, and later notifies for the cancelled tasks are ignored.
        Handles are cancelled on the calling thread, outside the lock.
        """
        state = TaskState.cancelled(head_cap(reason, self.settings.max_error_chars, "cancel reason"))
        with self._lock:
            handles = [record.handle for record in self._records.values() if record.handle is not None]
            cancelled = list(self._live)
            for id in cancelled:
                record = self._records[id]
                self._finish(id, record, state)
                record.sealed = True
            self._pending.clear()
            self._cleared_through = self._sequence
        _cancel_handles(handles)
        for id in cancelled:
            self._emit(TaskFinished(TaskNotification(id, state)))
        return cancelled

    # -- pending notifications -------------------------------------------------------------

    def drain_notifications(self) -> list[TaskNotification]:
        """Take every pending notification, in the order the tasks finished. Exactly once:
        a notification is returned by one drain only. Records stay in the store."""
        with self._lock:
            drained = list(self._pending.values())
            self._pending.clear()
        return drained

    def restore_notifications(self, notifications: Sequence[TaskNotification]) -> int:
        """Put drained notifications back at the front of the queue, in their order, after a
        delivery failed. Returns how many went back.

        A drain followed by a restore leaves the queue as if neither had happened, with two
        exceptions: notifications cleared by :meth:`cancel_all` since they were drained are not
        restored, and if a task was notified again since, its newer state is kept, at the
        restored place.
        """
        restored = 0
        with self._lock:
            for notification in reversed(notifications):
                if 0 < notification.sequence <= self._cleared_through:
                    continue
                if notification.id not in self._pending:
                    self._pending[notification.id] = notification
                self._pending.move_to_end(notification.id, last=False)
                restored += 1
            waiters = self._take_waiters() if restored else set()
        _wake(waiters)
        return restored

    def has_pending_notifications(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    async def wait_for_notification(self, timeout: float | None = None) -> bool:
        """Wait until a notification is pending; True when one is, False if ``timeout``
        seconds passed first. Returns at once when one is already pending.

        Works under trio and asyncio, and is woken by notifies from any thread. Always a
        checkpoint; cancelling the wait loses nothing (it never drains). Another consumer may
        drain between this returning and your own drain: a loop that waits for results should
        wait again while ``live_count()`` is positive and its drain came back empty.
        """
        await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(timeout):
            while True:  # another consumer may drain between our wake-up and our look
                waiter = LoopWaiter()
                with self._lock:
                    if self._pending:
                        return True
                    self._waiters.add(waiter)
                try:
                    await waiter.wait()
                finally:
                    with self._lock:
                        self._waiters.discard(waiter)
        return self.has_pending_notifications()

    # -- counts ----------------------------------------------------------------------------

    def running_count(self) -> int:
        """Tasks that have started and not finished (queued ones are not counted)."""
        with self._lock:
            return self._running

    def live_count(self) -> int:
        """Tasks not finished yet, running or queued: work whose results are still to come."""
        with self._lock:
            return len(self._live)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<BackgroundStore records={len(self._records)}/{self.settings.capacity} "
                f"running={self._running} pending={len(self._pending)}>"
            )

    # -- internals (call with the lock held unless said otherwise) -------------------------

    def _bound(self, id: str, state: TaskState) -> TaskState:
        """The state with its text relayed or capped. Called without the lock."""
        if state.status is _COMPLETED:
            outcome = self.relay.relay_if_large(f"task-{id}", state.text)
            return state if outcome.text is state.text else TaskState.completed(outcome.text)
        what = "task error" if state.status is _FAILED else "cancel reason"
        capped = head_cap(state.text, self.settings.max_error_chars, what)
        return state if capped is state.text else TaskState(state.status, capped)

    def _finish(self, id: str, record: _Record, state: TaskState) -> None:
        """Move a live record to finished. Its handle is dropped: nothing is left to cancel."""
        del self._live[id]
        if not record.queued:
            self._running -= 1
        record.queued = False
        record.state = state
        record.handle = None
        self._finished[id] = None

    def _forget_order(self, id: str, record: _Record) -> None:
        if record.state.is_finished:
            del self._finished[id]
        else:
            del self._live[id]
            if not record.queued:
                self._running -= 1

    def _evict_one(self) -> Cancellable | None:
        """Drop the longest-finished record, else the oldest live one; returns a handle to cancel."""
        if self._finished:
            id, _ = self._finished.popitem(last=False)
            del self._records[id]
            return None
        id, _ = self._live.popitem(last=False)
        record = self._records.pop(id)
        if not record.queued:
            self._running -= 1
        logger.warning(
            "store is full of live tasks (capacity %d): evicted running task %r; its result will be lost",
            self.settings.capacity,
            id,
        )
        return record.handle

    def _take_waiters(self) -> set[LoopWaiter]:
        waiters, self._waiters = self._waiters, set()
        return waiters

    def _emit(self, event: LifecycleEvent) -> None:
        """Hand ``event`` to the UI sink. Called without the lock; never raises."""
        if self._emit_to_sink is None:
            return
        try:
            self._emit_to_sink(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, trio.ClosedResourceError, trio.BrokenResourceError):
            logger.debug("UI sink is closed; dropped %r", event)
        except Exception:
            logger.warning("UI sink failed on %r; the notification is kept", event, exc_info=True)


def _reject_task_id(id: object) -> None:
    shown = repr(id) if len(repr(id)) <= 80 else repr(id)[:77] + "..."
    raise ValueError(
        f"task id must be a non-empty printable string of at most {MAX_TASK_ID_CHARS} "
        f"characters, got {shown}"
    )


def _sink_caller(sink: UISink | None) -> Callable[[LifecycleEvent], object] | None:
    if sink is None:
        return None
    send_nowait = getattr(sink, "send_nowait", None)
    if callable(send_nowait):
        return cast(Callable[[LifecycleEvent], object], send_nowait)
    if inspect.iscoroutinefunction(sink) or (callable(sink) and inspect.iscoroutinefunction(type(sink).__call__)):
        raise TypeError(
            "ui_sink must be synchronous: pass a memory send stream (anyio.create_memory_object_stream "
            "or trio.open_memory_channel) instead of an async function"
        )
    if callable(sink):
        return sink
    raise TypeError(f"ui_sink must be a memory send stream or a callable, got {type(sink).__name__}")


def _cancel_handles(handles: Iterable[Cancellable]) -> None:
    for handle in handles:
        try:
            handle.cancel()
        except Exception:
            logger.warning("cancelling task handle %r failed", handle, exc_info=True)


def _wake(waiters: Iterable[LoopWaiter]) -> None:
    for waiter in waiters:
        waiter.wake()
