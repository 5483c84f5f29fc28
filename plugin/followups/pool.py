"""``SubagentPool``: run subagents in the background, never more than ``max_concurrent`` at once,
and report each one's outcome to the :class:`BackgroundStore`. anyio: trio or asyncio."""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import json
import secrets
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar

import anyio
import anyio.abc
import sniffio
import trio
from pydantic import BaseModel

from .errors import CapacityExceeded
from .state import TaskState
from .store import DEFAULT_CANCEL_REASON, BackgroundStore

__all__ = ["CANCELLED_BY_REQUEST", "SESSION_CLOSED", "SubagentPool", "render_result"]

CANCELLED_BY_REQUEST = "cancelled by request"
SESSION_CLOSED = "cancelled: the session closed before it finished"

Subagent = Callable[..., Awaitable[Any]]

# A text this long may be relayed to a file: the store is notified from a worker thread.
_REPORT_IN_THREAD_CHARS = 64 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Phase(enum.Enum):
    QUEUED = "queued"  # waiting for a slot
    SCHEDULED = "scheduled"  # holds a slot, its task is about to start
    RUNNING = "running"
    DONE = "done"


class _Subagent:
    __slots__ = ("args", "fn", "id", "phase", "reason", "scope", "timeout")

    def __init__(self, id: str, fn: Subagent, args: tuple[Any, ...], timeout: float | None) -> None:
        self.id = id
        self.fn = fn
        self.args = args
        self.timeout = timeout
        self.scope = anyio.CancelScope()
        self.phase = _Phase.QUEUED
        self.reason = SESSION_CLOSED


class SubagentPool:
    """Capped concurrent subagents for one session, inside ``async with``.

    ``spawn`` admits a subagent atomically (the cap check, the slot and the store record are one
    step with no checkpoint), so any number of parallel tool calls never run more than
    ``max_concurrent`` subagents. At the cap, ``when_full="reject"`` raises
    :class:`CapacityExceeded` and ``when_full="queue"`` queues the subagent (FIFO, at most
    ``max_queued``; queued subagents are live store records, so the bound keeps them from being
    evicted).

    Outcomes: a returned string completes the task; any other value completes it with the value
    rendered as text (:func:`render_result`); an exception fails it with ``Type: message``; a
    timeout fails it saying so; a cancellation cancels it. One subagent's failure never
    affects another or the pool; only ``BaseException`` such as ``KeyboardInterrupt``
    propagates.

    Leaving the block cancels subagents still running or queued (``close="cancel"``) or
    waits for them all (``close="wait"``). If the block raises, they are cancelled either way.

    Task ids come from ``id_factory`` (random 8-hex-digit ids by default); a produced id
    that a store record already has is skipped.

    Threads: ``spawn``, ``cancel`` and ``cancel_all`` may be called from any thread. On the
    event loop thread that entered the pool (where async tool handlers run) they act at once;
    from another thread (a framework that runs tools in a thread pool) they hand the call to
    the loop and block until it has run there, so the cap stays atomic. Such a thread must not
    be one the loop is blocked waiting for, or both wait forever: run synchronous agent code
    in a worker thread (``trio.to_thread.run_sync`` / ``asyncio.to_thread``), not on the loop.
    """

    def __init__(
        self,
        store: BackgroundStore,
        *,
        max_concurrent: int | None = None,
        when_full: Literal["reject", "queue"] = "reject",
        max_queued: int | None = None,
        close: Literal["cancel", "wait"] = "cancel",
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        capacity = store.settings.capacity
        self.store = store
        self.max_concurrent = store.settings.max_concurrent if max_concurrent is None else max_concurrent
        if not 1 <= self.max_concurrent <= capacity:
            raise ValueError(
                f"max_concurrent must be between 1 and the store's capacity ({capacity}), got {self.max_concurrent}"
            )
        if when_full not in ("reject", "queue"):
            raise ValueError(f"when_full must be 'reject' or 'queue', got {when_full!r}")
        if close not in ("cancel", "wait"):
            raise ValueError(f"close must be 'cancel' or 'wait', got {close!r}")
        room = capacity - self.max_concurrent
        self.max_queued = room if max_queued is None else max_queued
        if not 0 <= self.max_queued <= room:
            raise ValueError(
                f"max_queued must be between 0 and capacity - max_concurrent ({room}), got {self.max_queued}: "
                "a queued task is a live store record and must never be evicted"
            )
        self.when_full = when_full
        self.close = close
        self._id_factory = id_factory or _random_id
        self._live: dict[str, _Subagent] = {}
        self._queue: collections.deque[_Subagent] = collections.deque()
        self._slots_taken = 0
        self._queued = 0
        self._running = 0
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loop_thread: int | None = None
        self._loop: trio.lowlevel.TrioToken | asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        if self._task_group is not None or self._closing:
            raise RuntimeError("a SubagentPool can be entered only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._loop_thread = threading.get_ident()
        self._loop = _running_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        if self.close == "cancel" or exc is not None:
            self._cancel_live(SESSION_CLOSED, report=True)
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._closing = True

    # -- spawning --------------------------------------------------------------------------

    def spawn(
        self,
        fn: Subagent,
        *args: Any,
        task_id: str | None = None,
        description: str = "",
        timeout: float | None = None,
    ) -> str:
        """Start ``fn(*args)`` in the background (or queue it) and return its task id at once.

        ``task_id`` defaults to a fresh random id; an id that is already live raises
        ``ValueError``. ``timeout`` (seconds) fails the task if it runs longer. Raises
        :class:`CapacityExceeded` at the cap (``reject``) or when the queue is full (``queue``),
        and ``RuntimeError`` outside the ``async with`` block. Not a checkpoint. Any thread
        (see the class docstring).
        """
        return self._on_loop(self._spawn, fn, *args, task_id=task_id, description=description, timeout=timeout)

    def _spawn(
        self, fn: Subagent, *args: Any, task_id: str | None, description: str, timeout: float | None
    ) -> str:
        if self._task_group is None or self._closing:
            raise RuntimeError("SubagentPool.spawn called outside its 'async with' block")
        if not callable(fn):
            raise TypeError(f"fn must be an async callable, got {type(fn).__name__}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        if task_id is None:
            task_id = self._fresh_id()
        else:
            existing = self.store.get(task_id)
            if task_id in self._live or (existing is not None and not existing.state.is_finished):
                raise ValueError(f"task id {task_id!r} is already running; choose another id")
        start_now = self._slots_taken < self.max_concurrent
        if not start_now and (self.when_full == "reject" or self._queued >= self.max_queued):
            raise self._refusal()
        subagent = _Subagent(task_id, fn, args, timeout)
        self.store.insert(task_id, description=description, queued=True)
        self.store.attach_handle(task_id, subagent.scope)
        self._live[task_id] = subagent
        if start_now:
            self._slots_taken += 1
            self._schedule(subagent)
        else:
            self._queue.append(subagent)
            self._queued += 1
        return task_id

    # -- cancelling ------------------------------------------------------------------------

    def cancel(self, task_id: str, reason: str = CANCELLED_BY_REQUEST) -> bool:
        """Cancel one subagent, queued or running. Returns False if it is not live in this pool.

        A subagent that had not started is reported cancelled at once; a running one is
        reported when it has unwound (at its next checkpoint). Any thread.
        """
        return self._on_loop(self._cancel, task_id, reason)

    def _cancel(self, task_id: str, reason: str) -> bool:
        subagent = self._live.get(task_id)
        if subagent is None or subagent.phase is _Phase.DONE:
            return False
        subagent.reason = reason
        subagent.scope.cancel()
        if subagent.phase is not _Phase.RUNNING:
            self._finish_unstarted(subagent, report=True)
        return True

    def cancel_all(self, reason: str = DEFAULT_CANCEL_REASON) -> list[str]:
        """Cancel every subagent of this pool, then apply :meth:`BackgroundStore.cancel_all`
        (which marks live tasks cancelled with ``reason`` and clears the pending queue).
        Returns the ids the store cancelled. Any thread."""
        return self._on_loop(self._cancel_all, reason)

    def _cancel_all(self, reason: str) -> list[str]:
        self._cancel_live(reason, report=False)
        return self.store.cancel_all(reason)

    # -- counts and waiting ----------------------------------------------------------------

    def running_count(self) -> int:
        """Subagents that are running right now: started and not yet finished."""
        return self._running

    def queued_count(self) -> int:
        """Subagents waiting for a slot."""
        return self._queued

    def live_count(self) -> int:
        """Subagents whose outcome is still to come: queued, starting or running, until the
        store has recorded their final state. It drops in the same step as the notification
        is queued, so a loop that finds nothing pending and ``live_count() > 0`` can wait for
        the next notification without missing one."""
        store = self.store
        return sum(1 for task_id in list(self._live) if not _has_final_state(store, task_id))

    async def wait_for_notification(self, timeout: float | None = None) -> bool:
        """Same as :meth:`BackgroundStore.wait_for_notification` on this pool's store."""
        return await self.store.wait_for_notification(timeout)

    # -- internals -------------------------------------------------------------------------

    def _schedule(self, subagent: _Subagent) -> None:
        assert self._task_group is not None
        subagent.phase = _Phase.SCHEDULED
        self._task_group.start_soon(self._run, subagent, name=f"subagent {subagent.id}")

    async def _run(self, subagent: _Subagent) -> None:
        holds_slot = True
        try:
            if subagent.phase is _Phase.DONE or subagent.scope.cancel_called:
                self._finish_unstarted(subagent, report=True)
                return
            subagent.phase = _Phase.RUNNING
            self._running += 1
            state: TaskState | None = None
            try:
                with subagent.scope:
                    self.store.notify_started(subagent.id)
                    state = await _outcome(subagent)
            except anyio.get_cancelled_exc_class():
                self.store.notify(subagent.id, TaskState.cancelled(subagent.reason))
                raise
            except BaseException as exc:
                self.store.notify(subagent.id, TaskState.failed(f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                self._running -= 1
            # Free the slot before the result can be seen: a model told of it may start
            # another task at once, and must not be refused by this one's report.
            holds_slot = False
            self._release_slot()
            await self._report(subagent.id, state or TaskState.cancelled(subagent.reason))
        finally:
            subagent.phase = _Phase.DONE
            self._live.pop(subagent.id, None)
            if holds_slot:
                self._release_slot()

    async def _report(self, task_id: str, state: TaskState) -> None:
        """Notify the store of a final state. A large text is relayed to a file on a worker
        thread, so the event loop is not blocked by the write; cancellation waits for that
        thread, so the report is never lost."""
        if len(state.text) < _REPORT_IN_THREAD_CHARS:
            self.store.notify(task_id, state)
        else:
            await anyio.to_thread.run_sync(self.store.notify, task_id, state)

    def _finish_unstarted(self, subagent: _Subagent, *, report: bool) -> None:
        """Retire a subagent cancelled before it ran (reporting it cancelled if ``report``).
        A scheduled one keeps its slot until its task starts and sees it is done."""
        if subagent.phase is _Phase.DONE:
            return
        if subagent.phase is _Phase.QUEUED:
            self._queued -= 1
        subagent.phase = _Phase.DONE
        self._live.pop(subagent.id, None)
        if report:
            self.store.notify(subagent.id, TaskState.cancelled(subagent.reason))

    def _release_slot(self) -> None:
        """Hand the freed slot to the oldest queued subagent, or give it back."""
        while self._queue:
            subagent = self._queue.popleft()
            if subagent.phase is _Phase.QUEUED:
                self._queued -= 1
                self._schedule(subagent)
                return
        self._slots_taken -= 1

    def _cancel_live(self, reason: str, *, report: bool) -> None:
        for subagent in list(self._live.values()):
            if not subagent.scope.cancel_called:  # one already cancelled keeps its reason
                subagent.reason = reason
            subagent.scope.cancel()
            if subagent.phase is not _Phase.RUNNING:
                self._finish_unstarted(subagent, report=report)

    def _refusal(self) -> CapacityExceeded:
        in_flight = self._slots_taken + self._queued
        if self.when_full == "reject":
            message = (
                f"Cannot start another background task: {self._slots_taken} of {self.max_concurrent} "
                f"subagent slots are in use. Do not retry in a loop: each running task reports its "
                f"result on its own in a <system-reminder> when it finishes. Wait for that notice "
                f"before starting another task, or do this piece of work inline yourself."
            )
        else:
            message = (
                f"Cannot queue another background task: all {self.max_concurrent} subagent slots are "
                f"in use and the queue is full ({self._queued} of {self.max_queued} waiting). Do not "
                f"retry in a loop: wait for a completion notice in a <system-reminder>, or do this "
                f"piece of work inline yourself."
            )
        return CapacityExceeded(message, limit=self.max_concurrent, in_flight=in_flight)

    def _fresh_id(self) -> str:
        """A new id from ``id_factory`` that no record in the store has."""
        for _ in range(1000):
            candidate = self._id_factory()
            if candidate not in self._live and self.store.get(candidate) is None:
                return candidate
        raise RuntimeError("id_factory returned 1000 ids that are already in use")

    def _on_loop(self, method: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``method`` on the pool's event loop thread: directly when called there (or
        before the pool is entered), else inside the loop while this thread blocks."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return method(*args, **kwargs)
        call = functools.partial(method, *args, **kwargs)
        if isinstance(loop, asyncio.AbstractEventLoop):
            return _run_in_asyncio_loop(loop, call)
        try:
            return trio.from_thread.run_sync(call, trio_token=loop)
        except trio.RunFinishedError as exc:
            raise RuntimeError(_LOOP_FINISHED) from exc


_LOOP_FINISHED = "SubagentPool called from a thread after its event loop finished"


def _running_loop() -> trio.lowlevel.TrioToken | asyncio.AbstractEventLoop:
    """What lets another thread run code on the current event loop."""
    library = sniffio.current_async_library()
    if library == "trio":
        return trio.lowlevel.current_trio_token()
    if library == "asyncio":
        return asyncio.get_running_loop()
    raise RuntimeError(f"followups supports trio and asyncio, not {library!r}")


def _run_in_asyncio_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], _T]) -> _T:
    # Inside a task, not a bare callback: anyio (cancel scopes) needs a current task.
    async def in_task() -> _T:
        return call()

    coroutine = in_task()
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError as exc:  # the loop is closed
        coroutine.close()
        raise RuntimeError(_LOOP_FINISHED) from exc
    return future.result()


async def _outcome(subagent: _Subagent) -> TaskState:
    """Run the subagent and map what happens to a final state. Cancellation propagates."""
    try:
        with anyio.move_on_after(subagent.timeout) as deadline:
            return TaskState.completed(render_result(await subagent.fn(*subagent.args)))
    except Exception as exc:
        return TaskState.failed(f"{type(exc).__name__}: {exc}")
    if deadline.cancelled_caught:
        return TaskState.failed(f"timed out after {subagent.timeout:g} s")
    raise AssertionError("unreachable: move_on_after exited without a result or a timeout")


def _has_final_state(store: BackgroundStore, task_id: str) -> bool:
    task = store.get(task_id)
    return task is None or task.state.is_finished


def _random_id() -> str:
    return secrets.token_hex(4)


def render_result(value: Any) -> str:
    """A subagent's return value as text for the model: strings as they are, pydantic models,
    dicts and lists as indented JSON, bytes decoded as UTF-8, None as an empty string, and
    anything else with ``str()``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return value.model_dump_json(indent=2)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return str(value)
