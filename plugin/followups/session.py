"""``Session``: one conversation's view of the store. Its records, its pending notifications,
its waiters and its events; a task of another session is unknown to it, exactly like a missing
one. :class:`~followups.BackgroundStore` is itself the view of its default session.

Every method may be called from any thread and any trio or asyncio task; each is one atomic
ledger operation (two where said). Synchronous methods never suspend; with a durable backend
they may block briefly on its I/O, so async code uses the ``wait_*`` methods and the pool,
which keep that I/O off the event loop.
"""

from __future__ import annotations

import builtins

import math

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from .core import StoreCore, unavailable
from .errors import NameInUse
from .events import Subscription
from .ledger.labels import ReminderLabels
from .external import ExternalTask, TaskSpec, register_external
from .ledger.protocol import (
    Admission,
    BackendUnavailable,
    CancelReport,
    CreateRequest,
    Lease,
    LeaseRequest,
    Selection,
    SessionCounts,
)
from .reminders import ReminderRenderer
from .relay import OutputRelay
from .runs import CancelHandle
from .settings import FollowupSettings
from .state import (
    CLOSE_POLICIES,
    BackgroundTask,
    ClosePolicy,
    LeaseInfo,
    RunRef,
    TaskNotification,
    TaskState,
    TaskStatus,
    check_kind,
)
from .truncation import head_cap


__all__ = [
    "CANCELLED_BY_REQUEST",
    "DEFAULT_CANCEL_REASON",
    "RESERVED_NAMES",
    "SESSION_CLOSED",
    "CancelOutcome",
    "Session",
    "SessionEnd",
]

DEFAULT_CANCEL_REASON = "cancelled — session switched"
CANCELLED_BY_REQUEST = "cancelled by request"
SESSION_CLOSED = "cancelled: the session closed before it finished"
RESERVED_NAMES = frozenset({"parent", "self", "all", "broadcast"})
MAX_TASK_ID_CHARS = 256
MAX_NAME_CHARS = 64
MAX_SESSION_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What a cancel request did: the ids it reached (true when any), and a sentence saying
    so, or why not ("Task 'x' is not running (current status: completed)")."""

    requested: tuple[str, ...]
    message: str

    def __bool__(self) -> bool:
        return bool(self.requested)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """What ending a session did with its live tasks, by close policy."""

    cancelled: tuple[str, ...]
    transferred: tuple[str, ...]
    kept: tuple[str, ...]


class Session:
    """The tasks and notifications of one session (an owner: a conversation or thread id).

    Get one with :meth:`BackgroundStore.session`; it is a light view, so take one whenever you
    need it. See the module docstring for the threading contract.
    """

    __slots__ = ("_core", "id")

    def __init__(self, core: StoreCore, session_id: str) -> None:
        self._core = core
        self.id = check_session_id(session_id)

    # -- context ----------------------------------------------------------------------------

    @property
    def settings(self) -> FollowupSettings:
        return self._core.settings

    @property
    def relay(self) -> OutputRelay:
        return self._core.relay

    @property
    def renderer(self) -> ReminderRenderer:
        """The renderer compiled for the store's settings and templates."""
        return self._core.renderer

    @property
    def store(self) -> Any:
        """The :class:`~followups.BackgroundStore` this session belongs to."""
        return self._core.store

    def session(self, session_id: str) -> Session:
        """Another session of the same store."""
        return Session(self._core, session_id)

    # -- records ----------------------------------------------------------------------------

    def insert(
        self,
        id: str,
        *,
        description: str = "",
        queued: bool = False,
        kind: str = "subagent",
        name: str | None = None,
        parent: str | None = None,
        close_policy: ClosePolicy = "cancel",
    ) -> RunRef:
        """Register task ``id`` as running (or, with ``queued=True``, as waiting until
        :meth:`notify_started`) and return the identity of its new run.

        Re-inserting an id starts a new run: a live previous run is superseded (its report will
        be ignored and its handle cancelled), and a previous run's undelivered notification is
        still delivered. At capacity the record that finished longest ago is evicted; only when
        every record is live is the oldest live one evicted, and its handle cancelled.
        Raises ``ValueError`` for an invalid id, kind or name, :class:`~followups.NameInUse`,
        and :class:`~followups.PendingLimitReached` past ``settings.max_pending``.
        """
        request = self._request(
            id, description=description, kind=kind, name=name, parent=parent, close_policy=close_policy, queued=queued
        )
        return self.create(request).ref

    def create(self, request: CreateRequest) -> Admission:
        """Create a run from a validated request (the pool and external tasks use this)."""
        self._flush_kept()
        return self._core.call(self._core.backend.create, request)

    def _request(
        self,
        task_id: str,
        *,
        description: str,
        kind: str,
        name: str | None,
        parent: str | None,
        close_policy: ClosePolicy,
        **admission: Any,
    ) -> CreateRequest:
        """A validated request for a run of ``task_id`` in this session; ``admission`` sets the
        remaining :class:`CreateRequest` fields (``if_exists``, ``max_running``, ``queued``...),
        so the request is built once."""
        core = self._core
        settings = core.settings
        return CreateRequest(
            session=self.id,
            task_id=check_task_id(task_id),
            epoch=core.epoch,
            now=core.clock(),
            capacity=settings.capacity,
            max_pending=settings.max_pending,
            description=check_text(description, "description"),
            kind=check_kind(kind),
            name=check_name(name),
            parent=None if parent is None else check_task_id(parent, "parent"),
            close_policy=check_close_policy(close_policy),
            **admission,
        )

    def notify(self, id: str | RunRef, state: TaskState) -> bool:
        """Record the final ``state`` of task ``id`` (its current run), or of run ``id`` given
        as a :class:`~followups.RunRef`, and queue its notification.

        The text is bounded first, on this thread: a large completed output is relayed to a
        file, a long error or cancel reason capped. A later notify with a different state
        updates the task (its pending notification in place, or queued again if it was already
        delivered); one that repeats the last state is a no-op. So are a live state, an unknown
        or superseded run, and a task :meth:`cancel_all` finished. Returns whether anything
        happened. If a durable store cannot commit it, the state is kept and retried, and
        :attr:`BackgroundTask.persistence_error` says so meanwhile.
        """
        if type(state) is not TaskState:
            raise TypeError(f"state must be a TaskState, got {type(state).__name__}")
        if not state.is_finished:
            return False
        ref = self._ref(id)
        if ref is None:
            return False
        applied = self._core.report(ref, state)
        if applied:
            self._core.local_runs.discard(ref)
        return applied

    def notify_started(self, id: str | RunRef) -> bool:
        """Mark a live task as started (a queued one leaves the queue) and emit
        :class:`~followups.TaskStarted`. False for an unknown, finished or already started task."""
        ref = self._ref(id)
        if ref is None:
            return False
        return self._core.call(self._core.backend.start, ref, now=self._core.clock())

    def report_progress(self, id: str | RunRef, message: str) -> bool:
        """Record a live task's latest progress line (shown by ``task_status`` and ``list``,
        emitted as :class:`~followups.TaskProgress`). Progress never produces a reminder."""
        ref = self._ref(id)
        if ref is None:
            return False
        message = head_cap(check_text(message, "progress message"), 500, "progress")
        return self._core.call(self._core.backend.progress, ref, message, now=self._core.clock())

    def attach_handle(self, id: str, handle: Any) -> None:
        """Keep ``handle`` (anything with ``cancel()``) so that a cancel of task ``id`` reaches
        it: ``handle.cancel()`` runs on the loop it was attached on. A previous handle of the
        same run is cancelled; for an unknown or finished task nothing is kept."""
        task = self.get(id)
        if task is None or task.id != id:
            if not callable(getattr(handle, "cancel", None)):
                raise TypeError(f"handle must have a cancel() method, got {type(handle).__name__}")
            return
        runs = self._core.local_runs
        holder = CancelHandle(handle, runs, task.ref)
        if task.state.is_finished:
            return
        previous = runs.add(task.ref, holder)
        if isinstance(previous, CancelHandle) and previous.handle is not handle:
            previous.cancel_now()

    # -- reads ------------------------------------------------------------------------------

    def get(self, id: str) -> BackgroundTask | None:
        """A snapshot of task ``id`` (or of the task with that name), or None if this session
        has none. Read-only."""
        self._flush_kept()
        task = self._core.call(self._core.backend.get, self.id, id)
        return None if task is None else self._core.present(task)

    def list(self, status: TaskStatus | str | None = None, kind: str | None = None) -> builtins.list[BackgroundTask]:
        """The session's task records, oldest first by creation, filtered by status and kind."""
        return self._list(status=status, kind=kind)

    def children(self, id: str) -> builtins.list[BackgroundTask]:
        """The records of the tasks that task ``id`` spawned, oldest first."""
        return self._list(parent=id)

    def _list(
        self, *, status: TaskStatus | str | None = None, kind: str | None = None, parent: str | None = None
    ) -> builtins.list[BackgroundTask]:
        self._flush_kept()
        wanted = None if status is None else TaskStatus(status)
        tasks = self._core.call(self._core.backend.list, self.id, status=wanted, kind=kind, parent=parent)
        present = self._core.present
        return [present(task) for task in tasks]

    def counts(self) -> SessionCounts:
        """The session's counts at one instant (live, running, queued, pending, leased…)."""
        return self._core.call(self._core.backend.counts, self.id, now=self._core.clock())

    def has_live(self) -> bool:
        return self.counts().live > 0

    def live_count(self) -> int:
        """Tasks not finished yet, running or queued: work whose results are still to come."""
        return self.counts().live

    def running_count(self) -> int:
        """Tasks running (holding a slot) and not finished; queued ones are not counted."""
        return self.counts().running

    def queued_count(self) -> int:
        return self.counts().queued

    def pending_count(self) -> int:
        """Notifications ready to deliver (not held by an open lease)."""
        return self.counts().pending

    def has_pending_notifications(self) -> bool:
        return self.counts().pending > 0

    def pending_notifications(self) -> builtins.list[TaskNotification]:
        """The notifications ready to deliver, in finish order, without taking them."""
        return self._core.call(self._core.backend.pending, self.id, now=self._core.clock())

    def __len__(self) -> int:
        return self.counts().records

    def gc_finished(self) -> int:
        """Remove finished records, except those whose notification is still undelivered or
        whose final state is not persisted yet. Returns how many were removed."""
        self._flush_kept()
        return self._core.call(self._core.backend.gc_finished, self.id)

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, id: str, reason: str = CANCELLED_BY_REQUEST, *, tree: bool = False) -> CancelOutcome:
        """Ask for the cancellation of task ``id`` (or name), and with ``tree`` of every live
        descendant too. Any thread; the process that runs the task carries it out on its loop.
        A queued task is cancelled at once; a running one once it has unwound."""
        report = self._request_cancel(Selection(ids=(id,), tree=tree), reason)
        return _outcome(id, report)

    def cancel_tree(self, id: str, reason: str = CANCELLED_BY_REQUEST) -> builtins.list[str]:
        """Cancel task ``id`` and every live descendant, grandchildren included; returns the
        ids it reached."""
        return list(self._request_cancel(Selection(ids=(id,), tree=True), reason).requested)

    def cancel_descendants(self, parent_id: str, reason: str = CANCELLED_BY_REQUEST) -> builtins.list[str]:
        """Cancel every live descendant of ``parent_id`` (not the parent); returns their ids."""
        return list(self._request_cancel(Selection(ids=(parent_id,), descendants_only=True), reason).requested)

    def cancel_kind(self, kind: str, reason: str = CANCELLED_BY_REQUEST) -> builtins.list[str]:
        """Cancel every live task of ``kind``; returns their ids."""
        return list(self._request_cancel(Selection(kind=check_kind(kind)), reason).requested)

    def cancel_unreferenced(self, keep_ids: Collection[str], reason: str = CANCELLED_BY_REQUEST) -> builtins.list[str]:
        """Cancel every live task not in ``keep_ids`` (after a compaction dropped them from the
        conversation, say); returns their ids."""
        return list(self._request_cancel(Selection(keep=frozenset(keep_ids)), reason).requested)

    def _request_cancel(
        self, selection: Selection, reason: str, *, by: Any = "user"
    ) -> CancelReport:
        reason = head_cap(check_text(reason, "reason"), self._core.settings.max_error_chars, "cancel reason")
        core = self._core
        return core.call(core.backend.request_cancel, self.id, selection, by=by, reason=reason, now=core.clock())

    def cancel_all(self, reason: str = DEFAULT_CANCEL_REASON) -> builtins.list[str]:
        """End the session's background work: every live task is cancelled with ``reason``
        (a running one's process stops it), the pending queue is cleared, and
        :class:`~followups.TaskFinished` is emitted for each task cancelled. Returns their ids.
        Notifications drained before are not restored by a later :meth:`restore_notifications`,
        and late reports of the cancelled tasks are ignored. Waiters wake."""
        reason = head_cap(check_text(reason, "reason"), self._core.settings.max_error_chars, "cancel reason")
        return self._core.call(self._core.backend.cancel_all, self.id, reason=reason, now=self._core.clock())

    # -- sessions ---------------------------------------------------------------------------

    def transfer_to(self, successor: str | Session, task_ids: Sequence[str] | None = None) -> builtins.list[str]:
        """Move this session's live tasks (all, or ``task_ids``) and undelivered notifications
        (of those tasks, or all) to ``successor``, for a conversation compacted, forked or
        resumed under a new id. Running tasks keep running. Returns the ids of the live tasks
        moved; emits :class:`~followups.TaskTransferred` for each. Raises
        :class:`~followups.TransferConflict` (moving nothing) if the successor has a live task
        with one of their ids or names."""
        target = successor.id if isinstance(successor, Session) else check_session_id(successor)
        core = self._core
        moving = None if task_ids is None else list(task_ids)
        return core.call(core.backend.transfer, self.id, target, moving, now=core.clock())

    def end(self, successor: str | Session | None = None) -> SessionEnd:
        """End this session: each live task follows its close policy. ``cancel`` ones are
        cancelled (by ``session_closed``), ``transfer`` ones move to ``successor`` with the
        session's undelivered notifications, ``keep`` ones keep running here. Raises
        ``ValueError`` if a task should be transferred and no successor is given."""
        live = [task for task in self.list() if task.is_live]
        movers = [task.id for task in live if task.close_policy == "transfer"]
        if movers and successor is None:
            raise ValueError(
                f"tasks {', '.join(map(repr, movers))} have close policy 'transfer'; pass a successor session"
            )
        cancelled = self._request_cancel(Selection(close_policy="cancel"), SESSION_CLOSED, by="session_closed")
        transferred = self.transfer_to(successor, movers) if successor is not None and movers else []
        kept = tuple(task.id for task in live if task.close_policy == "keep")
        return SessionEnd(cancelled.requested, tuple(transferred), kept)

    # -- messages ---------------------------------------------------------------------------

    def send(self, id: str, message: str) -> None:
        """Put ``message`` in the inbox of the running subagent ``id`` (or name); it reads it
        with ``await ctx.inbox.receive()``. Raises :class:`~followups.UnknownTask` (also for a
        task of another session), :class:`~followups.TaskAlreadyFinished`,
        :class:`~followups.NoInbox`, :class:`~followups.InboxClosed` or
        :class:`~followups.InboxFull`."""
        message = check_text(message, "message")
        core = self._core
        limit = core.settings.inbox_max_messages
        core.call(core.backend.send, self.id, id, message, now=core.clock(), max_messages=limit)

    def register_external(
        self, spec: TaskSpec, *, cancel: Any = None, use_slot: bool = False, finish_on_cancel: bool = True
    ) -> ExternalTask:
        """Register a task whose work runs elsewhere (a process, a remote job) and return its
        handle; see :func:`followups.external.register_external`."""
        return register_external(self, spec, cancel=cancel, use_slot=use_slot, finish_on_cancel=finish_on_cancel)

    # -- delivery ---------------------------------------------------------------------------

    def lease(
        self, *, max_chars: int | None = None, item_overhead: int = 0, max_entries: int | None = None
    ) -> Lease | None:
        """Lease the pending notifications that fit (see :class:`~followups.ledger.LeaseRequest`)
        for one delivery; None when nothing is pending. Settle the lease with :meth:`settle`, or
        it expires after ``settings.delivery_lease_seconds`` and its notifications are pending
        again. Raises :class:`~followups.StoreUnavailable` if the store cannot answer."""
        self._flush_kept()
        core = self._core
        request = LeaseRequest(
            epoch=core.epoch,
            now=core.clock(),
            lease_seconds=core.settings.delivery_lease_seconds,
            max_chars=max_chars,
            item_overhead=item_overhead,
            max_entries=max_entries,
        )
        return core.call(core.backend.lease, self.id, request)

    def settle(self, lease_id: str, *, delivered: bool, only: Collection[str] | None = None) -> int:
        """Settle an open lease by its id, from any process: ``delivered=True`` confirms it (its
        notifications are done, unless one was re-reported since), ``False`` gives it back (they
        are pending again, at their places; ``only`` limits that to these notification ids).
        Idempotent; returns how many notifications it settled."""
        core = self._core
        if delivered:
            return core.call(core.backend.confirm, lease_id, now=core.clock())
        return core.call(core.backend.give_back, lease_id, now=core.clock(), only=only)

    @property
    def reminder_labels(self) -> ReminderLabels:
        """Where this store keeps the labels that recognise reminders by their text in a
        history without metadata (see :mod:`followups.ledger.labels`)."""
        return self._core.labels

    def leases(self) -> builtins.list[LeaseInfo]:
        """The open leases of this session (each with ``id``, ``task_ids``, ``expires_at``)."""
        return self._core.call(self._core.backend.leases, self.id, now=self._core.clock())

    def acknowledge(self, notification_ids: Collection[str]) -> int:
        """Mark these notifications delivered, leased or not: an adapter found them in a
        history it reloaded. Returns how many it settled."""
        return self._core.call(self._core.backend.acknowledge, self.id, list(notification_ids), now=self._core.clock())

    def drain_notifications(self) -> builtins.list[TaskNotification]:
        """Take every pending notification, in the order the tasks finished, as delivered.
        Exactly once: a notification is returned by one drain only. Records stay."""
        lease = self.lease()
        if lease is None:
            return []
        self.settle(lease.id, delivered=True)
        return list(lease.notifications)

    def restore_notifications(self, notifications: Sequence[TaskNotification]) -> int:
        """Put drained notifications back at their places in the queue after a delivery
        failed; returns how many went back. Those cleared by :meth:`cancel_all` since are not
        restored, and a task notified again since keeps its newer state, at the restored place."""
        return self._core.call(self._core.backend.restore, self.id, list(notifications), now=self._core.clock())

    # -- waiting ----------------------------------------------------------------------------

    async def wait_for_notification(self, timeout: float | None = None) -> bool:
        """Wait until a notification is pending, and return True. Return False when
        ``timeout`` seconds pass first, or as soon as nothing is pending and nothing is live
        (then no notification can come), so ``while s.live_count(): await
        s.wait_for_notification()`` always ends.

        Works under trio and asyncio, woken by changes from any thread (and, with a shared
        backend, any process). Always a checkpoint; cancelling it loses nothing (it never
        takes a notification). Another consumer may take the notification before you do.
        """
        await anyio.lowlevel.checkpoint()
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        core = self._core
        signal = core.signal(self.id)
        while True:
            version = signal.version
            counts = await core.call_async(core.backend.counts, self.id, now=core.clock())
            if counts.pending:
                return True
            if not counts.live:
                return False
            wait = deadline - anyio.current_time()
            if counts.next_expiry is not None:
                wait = min(wait, max(0.0, counts.next_expiry - core.clock()) + 0.001)
            if wait <= 0:
                return False
            await signal.wait_beyond(version, None if math.isinf(wait) else wait)

    async def wait_for_change(self, timeout: float | None = None) -> bool:
        """Wait until the session's pending queue or live count changes (a result arrives, a
        task starts or ends, a delivery is taken or given back, ``cancel_all``…): True, or False
        when ``timeout`` seconds pass first. Always a checkpoint."""
        signal = self._core.signal(self.id)
        return await signal.wait_beyond(signal.version, timeout)

    # -- events -----------------------------------------------------------------------------

    def subscribe(
        self, *, kinds: Collection[str] | None = None, include_finished: bool = True, buffer: int = 256
    ) -> Subscription:
        """Lifecycle events of this session's tasks, as an async iterator (see
        :class:`~followups.Subscription`): ``async with session.subscribe() as events: …``."""
        return self._core.hub.subscribe(
            session=self.id, kinds=kinds, include_finished=include_finished, buffer=buffer
        )

    # -- internals --------------------------------------------------------------------------

    def _ref(self, id: str | RunRef) -> RunRef | None:
        if isinstance(id, RunRef):
            return id
        core = self._core
        current_ref = core.current_ref
        if current_ref is not None:  # a backend's fast path: the ref without a snapshot
            try:
                return current_ref(self.id, id)
            except BackendUnavailable as exc:
                raise unavailable(exc) from exc
        task = core.call(core.backend.get, self.id, id)
        if task is None or task.id != id:
            return None
        return task.ref

    def _flush_kept(self) -> None:
        kept = self._core.kept
        if kept:
            kept.flush()

    def __repr__(self) -> str:
        try:
            counts = self.counts()
        except Exception:  # a repr must not raise, even with the store unreachable
            return f"<{type(self).__name__} {self.id!r} (unavailable)>"
        return (
            f"<{type(self).__name__} {self.id!r} records={counts.records}/{self._core.settings.capacity} "
            f"live={counts.live} pending={counts.pending}>"
        )


# -- validation -------------------------------------------------------------------------------


def check_task_id(id: object, what: str = "task id") -> str:
    if type(id) is not str or not 0 < len(id) <= MAX_TASK_ID_CHARS or not id.isprintable():
        raise ValueError(
            f"{what} must be a non-empty printable string of at most {MAX_TASK_ID_CHARS} characters, got {_shown(id)}"
        )
    return id


def check_session_id(id: object) -> str:
    if type(id) is not str or not 0 < len(id) <= MAX_SESSION_ID_CHARS or not id.isprintable():
        raise ValueError(
            f"session id must be a non-empty printable string of at most {MAX_SESSION_ID_CHARS} "
            f"characters, got {_shown(id)}"
        )
    return id


def check_name(name: object) -> str | None:
    if name is None:
        return None
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable() or name != name.strip():
        raise ValueError(
            f"task name must be a printable string of 1 to {MAX_NAME_CHARS} characters without surrounding "
            f"spaces, got {_shown(name)}"
        )
    if name.lower() in RESERVED_NAMES:
        raise NameInUse(name, reserved=True)
    return name


def check_close_policy(policy: object) -> ClosePolicy:
    if policy not in CLOSE_POLICIES:
        raise ValueError(f"close_policy must be one of {', '.join(CLOSE_POLICIES)}, got {policy!r}")
    return policy


def check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _outcome(key: str, report: CancelReport) -> CancelOutcome:
    if report.requested:
        if len(report.requested) == 1:
            return CancelOutcome(report.requested, f"Cancellation of task {report.requested[0]!r} was requested.")
        listed = ", ".join(report.requested)
        return CancelOutcome(report.requested, f"Cancellation was requested for {len(report.requested)} tasks: {listed}.")
    if report.not_live:
        _, status = report.not_live[0]
        return CancelOutcome((), f"Task {key!r} is not running (current status: {status.value})")
    return CancelOutcome((), f"Unknown task {key!r}: no task with this id or name is known")

