"""``MemoryBackend``: the ledger in this process's memory. The fast default, and the reference
for what every other backend must do (see :mod:`followups.ledger.protocol`).

One lock guards everything; every operation is one locked section with no I/O and no call out,
and its effects are handed to the listeners after the lock is released.
"""

from __future__ import annotations

import builtins

import dataclasses
import itertools
import logging
import threading
import types
import uuid
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from ..errors import (
    InboxClosed,
    InboxFull,
    NameInUse,
    NoInbox,
    PendingLimitReached,
    TaskAlreadyFinished,
    TaskIdInUse,
    TransferConflict,
    UnknownTask,
)
from ..state import (
    BackgroundTask,
    CancelledBy,
    LeaseInfo,
    NotificationKind,
    RunRef,
    TaskCancelRequested,
    TaskFinished,
    TaskNotification,
    TaskProgress,
    TaskRegistered,
    TaskStarted,
    TaskState,
    TaskStatus,
    TaskTransferred,
)
from .protocol import (
    Admission,
    AdmissionRefused,
    CancelReport,
    CreateRequest,
    Effect,
    FinishReport,
    Lease,
    LeaseRequest,
    LedgerListener,
    RunAction,
    Selection,
    SessionChanged,
    SessionCounts,
)

__all__ = ["MemoryBackend"]

logger = logging.getLogger("followups.ledger")

_QUEUED = TaskStatus.QUEUED
_RUNNING = TaskStatus.RUNNING
_CANCELLED = TaskStatus.CANCELLED
_LIVE = frozenset({_QUEUED, _RUNNING})
_QUEUED_STATE = TaskState.queued()
_RUNNING_STATE = TaskState.running()

# TaskNotification without the frozen dataclass's per-field object.__setattr__: one is built
# for every finished task.
_new = object.__new__
_slots = vars(TaskNotification)
_set_id = _slots["id"].__set__
_set_state = _slots["state"].__set__
_set_sequence = _slots["sequence"].__set__
_set_notification_id = _slots["notification_id"].__set__
_set_session = _slots["session"].__set__
_set_kind = _slots["kind"].__set__


def _notification(
    id: str, state: TaskState, sequence: int, notification_id: str, session: str, kind: NotificationKind
) -> TaskNotification:
    notification = _new(TaskNotification)
    _set_id(notification, id)
    _set_state(notification, state)
    _set_sequence(notification, sequence)
    _set_notification_id(notification, notification_id)
    _set_session(notification, session)
    _set_kind(notification, kind)
    return notification


# BackgroundTask likewise, for every read: its fields' setters, in field order.
_TASK_SETTERS = tuple(vars(BackgroundTask)[field.name].__set__ for field in dataclasses.fields(BackgroundTask))


def _snapshot(values: tuple[Any, ...]) -> BackgroundTask:
    """A :class:`BackgroundTask` of ``values``, one per field in field order."""
    task = _new(BackgroundTask)
    for set_field, value in zip(_TASK_SETTERS, values, strict=True):
        set_field(task, value)
    return task


class _Run:
    """One run of a task, while it owns its task's record."""

    __slots__ = (
        "cancel_by",
        "cancel_reason",
        "capped",
        "close_policy",
        "created_at",
        "description",
        "digest",
        "epoch",
        "finished_at",
        "has_inbox",
        "inbox",
        "inbox_closed",
        "kind",
        "name",
        "parent",
        "pending_entries",
        "progress",
        "progress_at",
        "questions",
        "ref",
        "relay_path",
        "sealed",
        "session",
        "started_at",
        "state",
        "task_id",
        "version",
    )

    def __init__(self, ref: RunRef, request: CreateRequest, state: TaskState) -> None:
        self.ref = ref
        self.task_id = ref.task_id  # a run keeps its ref, so its task id, for life
        self.session = request.session
        self.state = state
        self.description = request.description
        self.kind = request.kind
        self.name = request.name
        self.parent = request.parent
        self.close_policy = request.close_policy
        self.epoch = request.epoch
        self.capped = request.max_running is not None
        self.has_inbox = request.has_inbox
        self.created_at = request.now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.progress: str | None = None
        self.progress_at: float | None = None
        self.cancel_by: CancelledBy | None = None
        self.cancel_reason = ""
        self.sealed = False
        self.digest: str | None = None
        self.relay_path: str | None = None
        self.version = 0
        self.questions = 0
        self.pending_entries = 0
        self.inbox: builtins.list[str] | None = None  # made by the first message
        self.inbox_closed = False

    @property
    def live(self) -> bool:
        return self.state.status in _LIVE


class _Lease:
    __slots__ = ("entries", "epoch", "expired", "expires_at", "id")

    def __init__(self, id: str, entries: builtins.list[tuple[_Entry, int]], expires_at: float, epoch: str) -> None:
        self.id = id
        self.entries = entries  # (entry, the version leased)
        self.expires_at = expires_at
        self.epoch = epoch
        self.expired = False


class _Entry:
    """A pending notification: a run's result (``slot`` 0) or one of its questions."""

    __slots__ = ("generation", "lease", "notification", "relay_path", "run", "slot", "version")

    def __init__(self, run: _Run | None, slot: int, notification: TaskNotification, version: int) -> None:
        self.run = run  # None for a restored notification whose run no longer owns a record
        self.generation = int(notification.notification_id.partition(".")[0])
        self.slot = slot
        self.notification = notification
        self.version = version
        self.lease: _Lease | None = None
        self.relay_path: str | None = None if run is None else run.relay_path

    @property
    def available(self) -> bool:
        lease = self.lease
        return lease is None or lease.expired


def _uncount(entry: _Entry) -> None:
    if entry.run is not None:
        entry.run.pending_entries -= 1


def _entry_key(notification: TaskNotification) -> Any:
    """The pending-queue key of a notification, from its id: ``G.V`` for a result of the run
    with generation G, ``G.qN`` for its N-th question. None for an id not made by a ledger."""
    generation, _, rest = notification.notification_id.partition(".")
    if not generation.isdigit():
        return None
    if rest.startswith("q") and rest[1:].isdigit():
        return (int(generation), int(rest[1:]))
    return int(generation)


_NONE: Any = types.MappingProxyType({})


class _Session:
    __slots__ = (
        "available",
        "capped_queued",
        "cap",
        "capped_running",
        "changed",
        "children",
        "cleared_through",
        "finished",
        "live",
        "name",
        "names",
        "pending",
        "queue",
        "queued",
        "records",
        "running",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.changed = SessionChanged(name)
        self.records: dict[str, _Run] = {}
        self.live: dict[str, None] = {}  # by creation
        # These four start as the shared read-only _NONE and are made by their first write
        # (the own_* methods): most sessions never use some of them, and an empty dict costs
        # 64 bytes. Reads work on _NONE as on an empty dict; a write to it raises.
        self.finished: dict[str, None] = _NONE  # by finish: the eviction order
        self.names: dict[str, str] = _NONE  # live task name -> task id
        self.children: dict[str, set[str]] = _NONE  # parent task id -> child task ids
        # capped runs waiting for a slot (stale ones skipped); made by the first one, as most
        # sessions never queue and an empty deque costs more than the rest of a session
        self.queue: deque[_Run] | None = None
        self.running = 0
        self.queued = 0
        self.capped_running = 0
        self.cap: int | None = None  # the last concurrency cap a create of this session named
        self.capped_queued = 0
        self.pending: dict[Any, _Entry] = _NONE  # in finish order
        self.available = 0
        self.cleared_through = 0

    def own_finished(self) -> dict[str, None]:
        if self.finished is _NONE:
            self.finished = {}
        return self.finished

    def own_names(self) -> dict[str, str]:
        if self.names is _NONE:
            self.names = {}
        return self.names

    def own_children(self) -> dict[str, set[str]]:
        if self.children is _NONE:
            self.children = {}
        return self.children

    def own_pending(self) -> dict[Any, _Entry]:
        if self.pending is _NONE:
            self.pending = {}
        return self.pending

    def enqueue(self, run: _Run) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(run)


_EMPTY_SESSION = _Session("")


class MemoryBackend:
    """The ledger in memory: see :mod:`followups.ledger.protocol` for the contract.

    Thread-safe. Any number of stores may connect to one backend (each gets its own epoch),
    which is how tests stand in for several processes sharing one ledger.
    """

    url = "memory://"
    blocking = False

    # The classes of the ledger's objects: a durable backend substitutes subclasses that note
    # what an operation changed.
    _run_type: type[_Run] = _Run
    _entry_type: type[_Entry] = _Entry
    _lease_type: type[_Lease] = _Lease
    _session_type: type[_Session] = _Session

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._runs: dict[RunRef, _Run] = {}
        self._leases: dict[str, _Lease] = {}
        self._generations = itertools.count(1)
        self._sequence = 0
        self._next_expiry = float("inf")
        self._total_cap: int | None = None
        self._listeners: dict[str, LedgerListener] = {}
        self._listening: tuple[LedgerListener, ...] = ()  # their snapshot, for every operation
        self._epochs = itertools.count(1)

    # -- connection ---------------------------------------------------------------------------

    def connect(self, listener: LedgerListener, *, now: float) -> str:
        with self._lock:
            epoch = f"memory-{next(self._epochs)}"
            self._set_listener(epoch, listener)
        return epoch

    def disconnect(self, epoch: str) -> None:
        with self._lock:
            self._set_listener(epoch, None)

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()
            self._listening = ()

    def _set_listener(self, epoch: str, listener: LedgerListener | None) -> None:
        """Register (or, with None, drop) ``epoch``'s listener; the caller holds the lock."""
        if listener is None:
            self._listeners.pop(epoch, None)
        else:
            self._listeners[epoch] = listener
        self._listening = tuple(self._listeners.values())

    def _wants_events(self) -> bool:
        for listener in self._listening:
            if listener.wants_events:
                return True
        return False

    def _dispatch(self, effects: builtins.list[Effect]) -> None:
        if not effects:
            return
        for listener in self._listening:
            try:
                listener.apply(effects)
            except Exception:
                logger.exception("a ledger listener failed on %d effects", len(effects))

    # -- runs -----------------------------------------------------------------------------------

    def create(self, request: CreateRequest) -> Admission:
        effects: builtins.list[Effect] = []
        with self._lock:
            session = self._session(request.session)
            task_id = request.task_id
            existing = session.records.get(task_id)
            if existing is not None and (
                request.if_exists == "refuse" or (request.if_exists == "refuse_live" and existing.live)
            ):
                raise TaskIdInUse(task_id, status=existing.state.status.value)
            name = request.name
            if name is not None:
                holder = session.names.get(name)
                if holder is not None and holder != task_id:
                    raise NameInUse(name, task_id=holder)
            if len(session.pending) >= request.max_pending:
                raise PendingLimitReached(pending=len(session.pending), limit=request.max_pending)
            superseded_slot = existing is not None and existing.capped and existing.state.status is _RUNNING
            if request.max_running is not None:
                session.cap = request.max_running
                self._total_cap = request.max_running_total
                freed = 1 if superseded_slot else 0
                under_cap = session.capped_running - freed < request.max_running
                under_total = request.max_running_total is None or self._running_total() - freed < request.max_running_total
                if under_cap and under_total:
                    state = _RUNNING_STATE
                elif request.when_full == "queue" and session.capped_queued < request.max_queued:
                    state = _QUEUED_STATE
                else:
                    raise AdmissionRefused(
                        "queue_full" if request.when_full == "queue" else "cap" if not under_cap else "total_cap",
                        running=session.capped_running if not under_cap else self._running_total(),
                        queued=session.capped_queued,
                    )
            else:
                state = _QUEUED_STATE if request.queued else _RUNNING_STATE
            if existing is not None:
                self._drop_record(
                    session,
                    existing,
                    effects,
                    by=None,
                    reason=f"cancelled: superseded by a new run of task {task_id!r}",
                    admit=request.max_running is None,
                )
            elif len(session.records) >= request.capacity:
                self._evict_one(session, effects)
            ref = RunRef(request.session, task_id, next(self._generations))
            run = self._run_type(ref, request, state)
            session.records[task_id] = run
            session.live[task_id] = None
            if name is not None:
                session.own_names()[name] = task_id
            if request.parent is not None:
                session.own_children().setdefault(request.parent, set()).add(task_id)
            if state is _QUEUED_STATE:
                session.queued += 1
                if run.capped:
                    session.capped_queued += 1
                    session.enqueue(run)
            else:
                session.running += 1
                if run.capped:
                    session.capped_running += 1
            self._runs[ref] = run
            if self._wants_events():
                effects.append(TaskRegistered(self._task(run)))
            effects.append(session.changed)
        self._dispatch(effects)
        return Admission(ref, state.status)

    def start(self, ref: RunRef, *, now: float) -> bool:
        effects: builtins.list[Effect] = []
        with self._lock:
            run = self._runs.get(ref)
            if run is None or not run.live or run.cancel_by is not None or run.started_at is not None:
                return False
            session = self._sessions[run.session]
            if run.state.status is _QUEUED:
                if run.capped:
                    return False
                run.state = _RUNNING_STATE
                session.queued -= 1
                session.running += 1
            run.started_at = now
            if self._wants_events():
                effects.append(TaskStarted(run.task_id, run.session, run.kind))
        self._dispatch(effects)
        return True

    def progress(self, ref: RunRef, message: str, *, now: float) -> bool:
        effects: builtins.list[Effect] = []
        with self._lock:
            run = self._runs.get(ref)
            if run is None or not run.live:
                return False
            run.progress = message
            run.progress_at = now
            if self._wants_events():
                effects.append(TaskProgress(run.task_id, message, now, run.session, run.kind))
        self._dispatch(effects)
        return True

    def finish(self, ref: RunRef, report: FinishReport) -> bool:
        effects: builtins.list[Effect] = []
        with self._lock:
            run = self._runs.get(ref)
            if run is None or run.sealed:
                return False
            live = run.state.status in _LIVE
            if not live and run.digest == report.digest:
                return False
            session = self._sessions[run.session]
            state = report.state
            if live:
                self._retire(session, run, state, effects, report.now)
            else:
                run.state = state
            run.digest = report.digest
            run.relay_path = report.relay_path
            self._queue_result(session, run, effects)
            effects.append(session.changed)
        self._dispatch(effects)
        return True

    def request_cancel(
        self, session: str, selection: Selection, *, by: CancelledBy, reason: str, now: float
    ) -> CancelReport:
        effects: builtins.list[Effect] = []
        with self._lock:
            state = self._sessions.get(session)
            if state is None:
                return CancelReport(unknown=tuple(selection.ids or ()))
            targets, not_live, unknown = self._select(state, selection)
            for run in targets:
                self._cancel_run(state, run, by, reason, now, effects)
            if targets:
                effects.append(state.changed)
        self._dispatch(effects)
        return CancelReport(tuple(run.task_id for run in targets), tuple(not_live), tuple(unknown))

    def cancel_all(self, session: str, *, reason: str, now: float) -> builtins.list[str]:
        effects: builtins.list[Effect] = []
        with self._lock:
            state = self._sessions.get(session)
            if state is None:
                return []
            cancelled_state = TaskState.cancelled(reason)
            wants = self._wants_events()
            cancelled = [state.records[task_id] for task_id in state.live]
            for run in cancelled:
                effects.append(RunAction(run.epoch, run.ref, "cancel", reason))
                run.cancel_by = "cancel_all"
                run.cancel_reason = reason
                run.sealed = True
                self._retire(state, run, cancelled_state, effects, now, admit=False, cascade=False)
                if wants:
                    notification = _notification(run.task_id, cancelled_state, 0, "", session, "result")
                    effects.append(TaskFinished(notification, run.kind))
            for entry in state.pending.values():
                _uncount(entry)
            if state.pending:
                state.pending.clear()
            state.available = 0
            state.queue = None
            state.cleared_through = self._sequence
            effects.append(state.changed)
        self._dispatch(effects)
        return [run.task_id for run in cancelled]

    def transfer(self, from_session: str, to_session: str, task_ids: Sequence[str] | None, *, now: float) -> builtins.list[str]:
        effects: builtins.list[Effect] = []
        if from_session == to_session:
            return []
        with self._lock:
            source = self._sessions.get(from_session)
            if source is None:
                return []
            if task_ids is None:
                moving = [source.records[task_id] for task_id in source.live]
                wanted: set[str] | None = None
            else:
                wanted = set(task_ids)
                moving = [source.records[task_id] for task_id in source.live if task_id in wanted]
            target = self._session(to_session)
            clashing_ids = [run.task_id for run in moving if (t := target.records.get(run.task_id)) is not None and t.live]
            clashing_names = [run.name for run in moving if run.name is not None and run.name in target.names]
            if clashing_ids or clashing_names:
                raise TransferConflict(to_session, ids=clashing_ids, names=clashing_names)
            wants = self._wants_events()
            for run in moving:
                self._move_run(source, target, run)
                if wants:
                    effects.append(TaskTransferred(run.task_id, from_session, to_session, run.kind))
            moved_entries = [
                (key, entry)
                for key, entry in source.pending.items()
                if wanted is None or entry.notification.id in wanted
            ]
            for key, entry in moved_entries:
                del source.pending[key]
                self._sequence += 1
                old = entry.notification
                entry.notification = _notification(
                    old.id, old.state, self._sequence, old.notification_id, to_session, old.kind
                )
                target.own_pending()[key] = entry
                if entry.available:
                    source.available -= 1
                    target.available += 1
            effects.append(source.changed)
            effects.append(target.changed)
        self._dispatch(effects)
        return [run.task_id for run in moving]

    # -- inbox and questions ----------------------------------------------------------------------

    def send(self, session: str, target: str, message: str, *, now: float, max_messages: int) -> RunRef:
        effects: builtins.list[Effect] = []
        with self._lock:
            state = self._sessions.get(session)
            run = None if state is None else self._resolve(state, target)
            if run is None:
                raise UnknownTask(target)
            if not run.live:
                raise TaskAlreadyFinished(target, status=run.state.status.value)
            if not run.has_inbox:
                raise NoInbox(target)
            if run.inbox_closed:
                raise InboxClosed(target)
            if run.inbox is None:
                run.inbox = []
            if len(run.inbox) >= max_messages:
                raise InboxFull(target, limit=max_messages)
            run.inbox.append(message)
            effects.append(RunAction(run.epoch, run.ref, "inbox"))
        self._dispatch(effects)
        return run.ref

    def take_inbox(self, ref: RunRef) -> builtins.list[str]:
        with self._lock:
            run = self._runs.get(ref)
            if run is None or not run.inbox:
                return []
            messages, run.inbox = run.inbox, None
            return messages

    def close_inbox(self, ref: RunRef) -> None:
        with self._lock:
            run = self._runs.get(ref)
            if run is not None:
                run.inbox_closed = True

    def ask(self, ref: RunRef, question: str, *, now: float) -> str | None:
        effects: builtins.list[Effect] = []
        with self._lock:
            run = self._runs.get(ref)
            if run is None or not run.live:
                return None
            session = self._sessions[run.session]
            run.questions += 1
            self._sequence += 1
            notification_id = f"{ref.generation}.q{run.questions}"
            notification = _notification(
                run.task_id, TaskState(run.state.status, question), self._sequence, notification_id, run.session, "question"
            )
            session.own_pending()[(ref.generation, run.questions)] = self._entry_type(run, run.questions, notification, 0)
            run.pending_entries += 1
            session.available += 1
            effects.append(session.changed)
        self._dispatch(effects)
        return notification_id

    # -- delivery -------------------------------------------------------------------------------

    def lease(self, session: str, request: LeaseRequest) -> Lease | None:
        effects: builtins.list[Effect] = []
        with self._lock:
            self._expire(request.now)
            state = self._sessions.get(session)
            if state is None or not state.available:
                return None
            lease = self._lease_type(uuid.uuid4().hex, [], request.now + request.lease_seconds, request.epoch)
            taken: builtins.list[TaskNotification] = []
            budget = request.max_chars
            limit = request.max_entries
            overhead = request.item_overhead
            used = 0
            for entry in state.pending.values():
                if not entry.available:
                    continue
                notification = entry.notification
                if budget is not None:
                    weight = len(notification.id) + notification.state.text_length + overhead
                    if taken and used + weight > budget:
                        break
                    used += weight
                entry.lease = lease
                lease.entries.append((entry, entry.version))
                taken.append(notification)
                if limit is not None and len(taken) >= limit:
                    break
            state.available -= len(taken)
            remaining = state.available
            self._leases[lease.id] = lease
            if lease.expires_at < self._next_expiry:
                self._next_expiry = lease.expires_at
            effects.append(state.changed)
        self._dispatch(effects)
        return Lease(lease.id, session, tuple(taken), lease.expires_at, remaining)

    def confirm(self, lease_id: str, *, now: float) -> int:
        effects: builtins.list[Effect] = []
        deleted = 0
        with self._lock:
            self._expire(now)
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                return 0
            touched: dict[str, _Session] = {}
            for entry, version in lease.entries:
                if entry.version != version or entry.lease is not lease:
                    continue
                session = self._sessions[entry.notification.session]
                key = self._key(entry)
                if session.pending.get(key) is not entry:
                    continue  # cleared by cancel_all, and maybe queued anew since
                del session.pending[key]
                _uncount(entry)
                if entry.available:
                    session.available -= 1
                deleted += 1
                touched[session.name] = session
            effects.extend(session.changed for session in touched.values())
        self._dispatch(effects)
        return deleted

    def give_back(self, lease_id: str, *, now: float, only: Collection[str] | None = None) -> int:
        effects: builtins.list[Effect] = []
        returned = 0
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0
            keep: builtins.list[tuple[_Entry, int]] = []
            touched: dict[str, _Session] = {}
            for entry, version in lease.entries:
                if only is not None and entry.notification.notification_id not in only:
                    keep.append((entry, version))
                    continue
                session = self._sessions[entry.notification.session]
                if entry.lease is lease and session.pending.get(self._key(entry)) is entry:
                    entry.lease = None
                    if not lease.expired:
                        session.available += 1
                        touched[session.name] = session
                    returned += 1
            if keep:
                lease.entries = keep
            else:
                del self._leases[lease_id]
            effects.extend(session.changed for session in touched.values())
        self._dispatch(effects)
        return returned

    def acknowledge(self, session: str, notification_ids: Collection[str], *, now: float) -> int:
        effects: builtins.list[Effect] = []
        wanted = set(notification_ids)
        with self._lock:
            self._expire(now)
            state = self._sessions.get(session)
            if state is None or not wanted:
                return 0
            doomed = [key for key, entry in state.pending.items() if entry.notification.notification_id in wanted]
            for key in doomed:
                entry = state.pending.pop(key)
                _uncount(entry)
                if entry.available:
                    state.available -= 1
            if doomed:
                effects.append(state.changed)
        self._dispatch(effects)
        return len(doomed)

    def restore(self, session: str, notifications: Sequence[TaskNotification], *, now: float) -> int:
        effects: builtins.list[Effect] = []
        restored = 0
        with self._lock:
            self._expire(now)
            state = self._sessions.get(session)
            if state is None:
                return 0
            for notification in notifications:
                if 0 < notification.sequence <= state.cleared_through:
                    continue
                key = _entry_key(notification)
                if key is None:
                    continue
                entry = state.pending.get(key)
                if entry is not None:  # a newer state of the same run is pending: keep it, at the old place
                    old = entry.notification
                    entry.notification = _notification(
                        old.id, old.state, notification.sequence, old.notification_id, session, old.kind
                    )
                else:
                    run = self._runs_by_generation(key)
                    entry = self._entry_type(run, 0 if isinstance(key, int) else key[1], notification, 0)
                    if run is not None:
                        run.pending_entries += 1
                    state.own_pending()[key] = entry
                    state.available += 1
                restored += 1
            if restored:
                state.pending = dict(sorted(state.pending.items(), key=lambda item: item[1].notification.sequence))
                effects.append(state.changed)
        self._dispatch(effects)
        return restored

    # -- maintenance ------------------------------------------------------------------------------

    def recover(self, *, now: float) -> int:
        effects: builtins.list[Effect] = []
        with self._lock:
            before = {name: session.available for name, session in self._sessions.items()}
            self._expire(now)
            effects.extend(
                session.changed for name, session in self._sessions.items() if session.available != before[name]
            )
        self._dispatch(effects)
        return 0

    def gc_finished(self, session: str) -> int:
        effects: builtins.list[Effect] = []
        with self._lock:
            state = self._sessions.get(session)
            if state is None:
                return 0
            doomed = [state.records[task_id] for task_id in state.finished if not state.records[task_id].pending_entries]
            for run in doomed:
                self._remove_record(state, run)
            if doomed:
                effects.append(state.changed)
        self._dispatch(effects)
        return len(doomed)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, session: str, key: str) -> BackgroundTask | None:
        with self._lock:
            state = self._sessions.get(session)
            run = None if state is None else self._resolve(state, key)
            return None if run is None else self._task(run)

    def current_ref(self, session: str, task_id: str) -> RunRef | None:
        """The ref of the run that owns the record with id ``task_id`` (never a name), or None.

        Not part of :class:`~followups.ledger.LedgerBackend`: an optional fast path that
        :class:`~followups.Session` uses when a backend has it (``notify`` by task id), instead
        of building a whole :meth:`get` snapshot. Thread-safe."""
        with self._lock:
            state = self._sessions.get(session)
            run = None if state is None else state.records.get(task_id)
            return None if run is None else run.ref

    def get_run(self, ref: RunRef) -> BackgroundTask | None:
        with self._lock:
            run = self._runs.get(ref)
            return None if run is None else self._task(run)

    def run_digest(self, ref: RunRef) -> str | None:
        with self._lock:
            run = self._runs.get(ref)
            return None if run is None else run.digest

    def list(
        self, session: str | None, *, status: TaskStatus | None = None, kind: str | None = None, parent: str | None = None
    ) -> builtins.list[BackgroundTask]:
        with self._lock:
            if session is None:
                runs: Iterator[_Run] = (run for state in self._sessions.values() for run in state.records.values())
            else:
                runs = iter(self._sessions.get(session, _EMPTY_SESSION).records.values())
            chosen = [
                run
                for run in runs
                if (status is None or run.state.status is status)
                and (kind is None or run.kind == kind)
                and (parent is None or run.parent == parent)
            ]
            chosen.sort(key=lambda run: (run.created_at, run.ref.generation))
            return [self._task(run) for run in chosen]

    def counts(self, session: str, *, now: float) -> SessionCounts:
        with self._lock:
            self._expire(now)
            state = self._sessions.get(session, _EMPTY_SESSION)
            expiries = [
                lease.expires_at
                for lease in self._leases.values()
                if not lease.expired and any(entry.notification.session == session for entry, _ in lease.entries)
            ]
            return SessionCounts(
                live=len(state.live),
                running=state.running,
                queued=state.queued,
                pending=state.available,
                leased=len(state.pending) - state.available,
                records=len(state.records),
                next_expiry=min(expiries, default=None),
            )

    def leases(self, session: str, *, now: float) -> builtins.list[LeaseInfo]:
        with self._lock:
            self._expire(now)
            found = []
            for lease in self._leases.values():
                if lease.expired:
                    continue
                entries = [
                    entry.notification
                    for entry, version in lease.entries
                    if entry.lease is lease and entry.version == version and entry.notification.session == session
                ]
                if entries:
                    found.append(
                        LeaseInfo(
                            lease.id,
                            session,
                            tuple(n.id for n in entries),
                            tuple(n.notification_id for n in entries),
                            lease.expires_at,
                        )
                    )
            found.sort(key=lambda info: info.expires_at)
            return found

    def pending(self, session: str, *, now: float) -> builtins.list[TaskNotification]:
        with self._lock:
            self._expire(now)
            state = self._sessions.get(session, _EMPTY_SESSION)
            return [entry.notification for entry in state.pending.values() if entry.available]

    def sessions(self) -> builtins.list[str]:
        with self._lock:
            return [name for name, state in self._sessions.items() if state.records or state.pending]

    def referenced_relay_paths(self) -> set[str]:
        with self._lock:
            paths = {
                entry.relay_path
                for state in self._sessions.values()
                for entry in state.pending.values()
                if entry.relay_path is not None
            }
            paths.update(
                run.relay_path
                for state in self._sessions.values()
                for run in state.records.values()
                if run.relay_path is not None
            )
            return paths

    # -- internals (with the lock held) ------------------------------------------------------------

    def _session(self, name: str) -> _Session:
        session = self._sessions.get(name)
        if session is None:
            session = self._sessions[name] = self._session_type(name)
        return session

    def _resolve(self, session: _Session, key: str) -> _Run | None:
        run = session.records.get(key)
        if run is not None:
            return run
        task_id = session.names.get(key)
        if task_id is not None:
            return session.records[task_id]
        named = [run for run in session.records.values() if run.name == key]
        return max(named, key=lambda run: run.ref.generation, default=None)

    def _task(self, run: _Run) -> BackgroundTask:
        ref = run.ref
        return _snapshot(
            (
                ref.task_id,
                run.state,
                run.description,
                run.session,
                run.kind,
                run.name,
                run.parent,
                ref.generation,
                run.created_at,
                run.started_at,
                run.finished_at,
                run.progress,
                run.progress_at,
                run.cancel_by,
                run.close_policy,
                None,  # persistence_error: the store's to add
                False,  # stalled: the store's to decide
                run.relay_path,
                None if ref.session == run.session else ref.session,
            )
        )

    def _key(self, entry: _Entry) -> Any:
        return entry.generation if entry.slot == 0 else (entry.generation, entry.slot)

    def _runs_by_generation(self, key: Any) -> _Run | None:
        generation = key if isinstance(key, int) else key[0]
        return next((run for run in self._runs.values() if run.ref.generation == generation), None)

    def _queue_result(self, session: _Session, run: _Run, effects: builtins.list[Effect]) -> None:
        """Queue the run's state as its pending result, or update the pending one in place."""
        generation = run.ref.generation
        run.version += 1
        notification_id = f"{generation}.{run.version}"
        entry = session.pending.get(generation)
        if entry is None:
            self._sequence += 1
            notification = _notification(run.task_id, run.state, self._sequence, notification_id, run.session, "result")
            session.own_pending()[generation] = self._entry_type(run, 0, notification, run.version)
            run.pending_entries += 1
            session.available += 1
        else:
            notification = _notification(
                run.task_id, run.state, entry.notification.sequence, notification_id, run.session, "result"
            )
            entry.notification = notification
            entry.version = run.version
            entry.relay_path = run.relay_path
            if not entry.available:
                session.available += 1
            entry.lease = None
        if self._wants_events():
            effects.append(TaskFinished(notification, run.kind))

    def _retire(
        self,
        session: _Session,
        run: _Run,
        final: TaskState,
        effects: builtins.list[Effect],
        now: float,
        *,
        admit: bool = True,
        cascade: bool = True,
    ) -> None:
        """Give a live run its final state and take it out of the live structures: its slot
        goes to the oldest queued run (``admit``) and its children follow their close policy
        (``cascade``)."""
        was_queued = run.state.status is _QUEUED
        run.state = final
        run.finished_at = now
        task_id = run.task_id
        del session.live[task_id]
        session.own_finished()[task_id] = None
        if run.name is not None and session.names.get(run.name) == task_id:
            del session.names[run.name]
        self._release(session, run, was_queued, effects, admit=admit)
        if cascade:
            self._cascade(session, run, effects, now)

    def _release(self, session: _Session, run: _Run, was_queued: bool, effects: builtins.list[Effect], *, admit: bool) -> None:
        """Uncount a run that leaves the live structures, freeing its slot."""
        if was_queued:
            session.queued -= 1
            if run.capped:
                session.capped_queued -= 1
        else:
            session.running -= 1
            if run.capped:
                session.capped_running -= 1
                if admit:
                    self._admit_next(session, effects)

    def _admit_next(self, session: _Session, effects: builtins.list[Effect]) -> None:
        """A capped slot was freed in ``session``: admit its oldest queued run, or, under a
        store-wide cap, the oldest queued run of another session that has room."""
        if self._total_cap is not None and self._running_total() >= self._total_cap:
            return
        if self._admit_from(session, effects) or self._total_cap is None:
            return
        for other in self._sessions.values():
            if other is not session and other.cap is not None and other.capped_running < other.cap:
                if self._admit_from(other, effects):
                    return

    def _admit_from(self, session: _Session, effects: builtins.list[Effect]) -> bool:
        queue = session.queue
        while queue:
            run = queue.popleft()
            if run.state.status is not _QUEUED or session.records.get(run.task_id) is not run:
                continue
            run.state = _RUNNING_STATE
            session.queued -= 1
            session.capped_queued -= 1
            session.running += 1
            session.capped_running += 1
            effects.append(RunAction(run.epoch, run.ref, "start"))
            return True
        return False

    def _running_total(self) -> int:
        return sum(session.capped_running for session in self._sessions.values())

    def _cascade(self, session: _Session, parent: _Run, effects: builtins.list[Effect], now: float) -> None:
        children = session.children.get(parent.task_id)
        if not children:
            return
        for child_id in sorted(children):
            child = session.records.get(child_id)
            if child is not None and child.live and child.close_policy == "cancel" and child.parent == parent.task_id:
                self._cancel_run(session, child, "parent_finished", f"cancelled: its parent task {parent.task_id!r} finished", now, effects)

    def _cancel_run(
        self, session: _Session, run: _Run, by: CancelledBy, reason: str, now: float, effects: builtins.list[Effect]
    ) -> None:
        """Ask for a live run's cancellation. One that never started (queued, or admitted and
        not yet started by its owner) is finished cancelled now; a started one is marked, and
        its owner told to cancel it (and to drop an unstarted one)."""
        if run.cancel_by is None:
            run.cancel_by = by
            run.cancel_reason = reason
            if self._wants_events():
                effects.append(TaskCancelRequested(run.task_id, by, reason, run.session, run.kind))
        effects.append(RunAction(run.epoch, run.ref, "cancel", run.cancel_reason))
        if run.started_at is None and (run.state.status is _QUEUED or run.capped):
            self._retire(session, run, TaskState.cancelled(run.cancel_reason), effects, now)
            self._queue_result(session, run, effects)

    def _select(self, session: _Session, selection: Selection) -> tuple[builtins.list[_Run], builtins.list[tuple[str, TaskStatus]], builtins.list[str]]:
        not_live: builtins.list[tuple[str, TaskStatus]] = []
        unknown: builtins.list[str] = []
        if selection.ids is None:
            roots = [session.records[task_id] for task_id in session.live]
        else:
            roots = []
            for key in selection.ids:
                run = self._resolve(session, key)
                if run is None:
                    unknown.append(key)
                elif run.live or selection.tree or selection.descendants_only:
                    roots.append(run)
                    if not run.live and not selection.descendants_only:
                        not_live.append((key, run.state.status))
                else:
                    not_live.append((key, run.state.status))
        chosen: dict[str, _Run] = {}
        for root in roots:
            if not selection.descendants_only and root.live:
                chosen.setdefault(root.task_id, root)
            if selection.tree or selection.descendants_only:
                for descendant in self._descendants(session, root):
                    chosen.setdefault(descendant.task_id, descendant)
        targets = [
            run
            for run in chosen.values()
            if (selection.kind is None or run.kind == selection.kind)
            and (selection.close_policy is None or run.close_policy == selection.close_policy)
            and run.task_id not in selection.keep
        ]
        return targets, not_live, unknown

    def _descendants(self, session: _Session, root: _Run) -> builtins.list[_Run]:
        found: builtins.list[_Run] = []
        seen = {root.task_id}
        stack = [root.task_id]
        while stack:
            current = stack.pop()
            for child_id in sorted(session.children.get(current, ())):
                if child_id in seen:
                    continue
                seen.add(child_id)
                child = session.records.get(child_id)
                if child is None or child.parent != current:
                    continue
                stack.append(child_id)
                if child.live:
                    found.append(child)
        return found

    def _drop_record(
        self, session: _Session, run: _Run, effects: builtins.list[Effect], *, by: CancelledBy | None, reason: str, admit: bool = True
    ) -> None:
        """Take a run's record away (superseded or evicted); a live run's owner is told to
        cancel it, and its later reports are ignored."""
        if run.live:
            del session.live[run.task_id]
            if run.name is not None and session.names.get(run.name) == run.task_id:
                del session.names[run.name]
            self._release(session, run, run.state.status is _QUEUED, effects, admit=admit)
            if by is not None and self._wants_events():
                effects.append(TaskCancelRequested(run.task_id, by, reason, run.session, run.kind))
            effects.append(RunAction(run.epoch, run.ref, "cancel", reason))
        self._remove_record(session, run)

    def _remove_record(self, session: _Session, run: _Run) -> None:
        task_id = run.task_id
        if session.records.get(task_id) is run:
            del session.records[task_id]
        if task_id in session.finished:
            del session.finished[task_id]
        if run.parent is not None:
            siblings = session.children.get(run.parent)
            if siblings is not None:
                siblings.discard(task_id)
                if not siblings:
                    del session.children[run.parent]
        self._runs.pop(run.ref, None)

    def _evict_one(self, session: _Session, effects: builtins.list[Effect]) -> None:
        if session.finished:
            task_id = next(iter(session.finished))
            del session.finished[task_id]
            self._remove_record(session, session.records[task_id])
            return
        task_id = next(iter(session.live))
        run = session.records[task_id]
        logger.warning(
            "session %r is full of live tasks: evicted live task %r; its result will be lost", session.name, task_id
        )
        self._drop_record(session, run, effects, by="evicted", reason="cancelled: evicted from a full store")

    def _move_run(self, source: _Session, target: _Session, run: _Run) -> None:
        task_id = run.task_id
        del source.live[task_id]
        del source.records[task_id]
        if run.name is not None and source.names.get(run.name) == task_id:
            del source.names[run.name]
        if run.parent is not None:
            siblings = source.children.get(run.parent)
            if siblings is not None:
                siblings.discard(task_id)
        if run.state.status is _QUEUED:
            source.queued -= 1
            target.queued += 1
            if run.capped:
                source.capped_queued -= 1
                target.capped_queued += 1
                target.enqueue(run)
        else:
            source.running -= 1
            target.running += 1
            if run.capped:
                source.capped_running -= 1
                target.capped_running += 1
        replaced = target.records.get(task_id)
        if replaced is not None:
            self._drop_record(target, replaced, [], by=None, reason="")
        run.session = target.name
        target.records[task_id] = run
        target.live[task_id] = None
        if run.name is not None:
            target.own_names()[run.name] = task_id
        if run.parent is not None:
            target.own_children().setdefault(run.parent, set()).add(task_id)

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        next_expiry = float("inf")
        for lease in self._leases.values():
            if lease.expired:
                continue
            if lease.expires_at <= now:
                lease.expired = True
                for entry, _ in lease.entries:
                    if entry.lease is lease:
                        session = self._sessions.get(entry.notification.session)
                        if session is not None and session.pending.get(self._key(entry)) is entry:
                            session.available += 1
            elif lease.expires_at < next_expiry:
                next_expiry = lease.expires_at
        self._next_expiry = next_expiry
        stale = [lease_id for lease_id, lease in self._leases.items() if lease.expired and not self._holds_any(lease)]
        for lease_id in stale:
            del self._leases[lease_id]

    def _holds_any(self, lease: _Lease) -> bool:
        return any(entry.lease is lease for entry, _ in lease.entries)
