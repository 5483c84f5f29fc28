"""The backend seam of the ledger: a small set of atomic operations over records, runs,
pending notifications, leases, cancel requests and inboxes, with one meaning for every backend.

A backend stores; it does not decide sizes, render, or touch the relay. Everything a caller
validates, bounds or renders is done before a call, in shared code (:mod:`followups.store`).
Each method below is **one atomic step**: a transaction, a locked section, or one server-side
script. Methods are synchronous and may be called from any thread at once.

**Identity.** :meth:`LedgerBackend.create` assigns a run its :class:`~followups.RunRef`. Every
operation on a run names it by that ref, wherever the run lives now (a transferred run keeps
its ref), and a ref that no longer owns its task's record (superseded by a newer run of the same
id, evicted, sealed by ``cancel_all``) is ignored.

**Effects.** After each operation has committed (never while holding a lock), the backend
calls :meth:`LedgerListener.apply` of every connected listener with what changed: the sessions
whose pending queue or live count changed, the lifecycle events, and the actions a run's owner
must carry out (cancel it, start it, read its inbox). A backend shared by several processes
also delivers the effects of other processes' operations to its listeners, from a thread of
its own.

**Time.** Callers pass ``now`` (seconds since the epoch); backends never read a clock for
semantics, so the contract suite can move time by hand.
"""

from __future__ import annotations

import builtins

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..state import (
    BackgroundTask,
    CancelledBy,
    ClosePolicy,
    LeaseInfo,
    LifecycleEvent,
    RunRef,
    TaskNotification,
    TaskState,
    TaskStatus,
)

__all__ = [
    "Admission",
    "AdmissionRefused",
    "BackendUnavailable",
    "CancelReport",
    "CreateRequest",
    "Effect",
    "FinishReport",
    "IfExists",
    "Lease",
    "LeaseRequest",
    "LedgerBackend",
    "LedgerListener",
    "RunAction",
    "Selection",
    "SessionChanged",
    "SessionCounts",
]

IfExists = Literal["supersede", "refuse_live", "refuse"]
"""What :meth:`LedgerBackend.create` does when the session already has a record with the task
id: start a new run that supersedes a live one (``supersede``, the store's ``insert``), refuse
only if that record is live (``refuse_live``, an explicit id given to a pool), or refuse any
record (``refuse``, a generated id that must be fresh)."""


# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """The pending queue or the live count of ``session`` changed: wake its waiters."""

    session: str


@dataclass(frozen=True, slots=True)
class RunAction:
    """Something the process that owns a run (its ``epoch``) must do on the run's own loop:
    ``cancel`` it (with ``reason``), ``start`` it (a queued run was admitted), or read its
    ``inbox`` (a message arrived)."""

    epoch: str
    ref: RunRef
    action: Literal["cancel", "start", "inbox"]
    reason: str = ""


Effect = SessionChanged | RunAction | LifecycleEvent


@runtime_checkable
class LedgerListener(Protocol):
    """What a backend tells about changes: the store that connected it."""

    @property
    def wants_events(self) -> bool:
        """False while nobody subscribes: a backend may then skip building event values."""
        ...

    def apply(self, effects: Sequence[Effect]) -> None:
        """Take what one committed operation changed. Called outside every backend lock, on the
        thread that made the change or on a backend's watcher thread; must not block."""
        ...

    def missed(self, session: str, count: int) -> None:
        """A shared backend could not hand on ``count`` events of ``session`` (they were
        published while its watcher was away and are gone from its event log): subscriptions
        that see that session get a ``Lagged(count)`` in their place. Same threading as
        :meth:`apply`."""
        ...


# -- requests and results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Everything :meth:`LedgerBackend.create` needs to register a run, already validated.

    ``max_running`` set makes the run take part in its session's concurrency cap: it runs at
    once only while fewer than ``max_running`` capped runs of the session hold a slot; else it
    is queued (``when_full="queue"``, FIFO, at most ``max_queued`` waiting) or refused
    (:class:`AdmissionRefused`). ``max_running_total`` also bounds the capped runs holding a
    slot across every session of the store; a queued run is admitted once both allow, from
    whichever session frees a slot. ``queued=True`` without a cap registers it as queued until
    :meth:`LedgerBackend.start` (the store's ``insert(queued=True)``). ``capacity`` bounds the
    session's records and ``max_pending`` its waiting notifications.
    """

    session: str
    task_id: str
    epoch: str
    now: float
    capacity: int
    max_pending: int
    description: str = ""
    kind: str = "subagent"
    name: str | None = None
    parent: str | None = None
    close_policy: ClosePolicy = "cancel"
    if_exists: IfExists = "supersede"
    max_running: int | None = None
    max_running_total: int | None = None
    when_full: Literal["reject", "queue"] = "reject"
    max_queued: int = 0
    queued: bool = False
    has_inbox: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    """A created run: its identity, and whether it holds a slot (``RUNNING``) or waits for one
    (``QUEUED``)."""

    ref: RunRef
    status: TaskStatus


class AdmissionRefused(Exception):
    """:meth:`LedgerBackend.create` found the session at its cap (``reason="cap"``), the store
    at its store-wide cap (``"total_cap"``; ``running`` counts the whole store then), or the
    session's queue full (``"queue_full"``); ``running`` and ``queued`` are capped runs."""

    def __init__(self, reason: Literal["cap", "total_cap", "queue_full"], *, running: int, queued: int) -> None:
        super().__init__(f"admission refused ({reason}): {running} running, {queued} queued")
        self.reason = reason
        self.running = running
        self.queued = queued


class BackendUnavailable(Exception):
    """A durable backend could not commit or answer (disk full, database locked past its
    timeout, server unreachable). ``where`` names the store. Shared code decides what the
    caller sees: a report is kept and retried, a read raises :class:`~followups.StoreUnavailable`."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True, slots=True)
class FinishReport:
    """A run's final state, bounded already (relayed or capped), with the ``digest`` of the
    state as the run reported it (:func:`followups.bounding.report_digest`): a report whose
    digest equals the run's last one is a duplicate and changes nothing."""

    state: TaskState
    digest: str
    now: float
    relay_path: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which live tasks of a session :meth:`LedgerBackend.request_cancel` reaches.

    ``ids`` (task ids or names; None means every live task), plus their live descendants with
    ``tree``, or only their descendants with ``descendants_only``; then narrowed to ``kind``, to
    ``close_policy``, and to tasks not in ``keep``.
    """

    ids: tuple[str, ...] | None = None
    tree: bool = False
    descendants_only: bool = False
    kind: str | None = None
    close_policy: ClosePolicy | None = None
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CancelReport:
    """What :meth:`LedgerBackend.request_cancel` did: the ids it requested a cancel for, in
    order; the named ids that exist but are not live, with their status; the names it does
    not know."""

    requested: tuple[str, ...] = ()
    not_live: tuple[tuple[str, TaskStatus], ...] = ()
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """How much :meth:`LedgerBackend.lease` takes: the longest prefix of the session's available
    notifications (in finish order) whose weights sum to at most ``max_chars`` (at least one,
    so delivery progresses), and at most ``max_entries``. A notification weighs
    ``len(id) + len(state.text) + item_overhead``; None means no limit."""

    epoch: str
    now: float
    lease_seconds: float
    max_chars: int | None = None
    item_overhead: int = 0
    max_entries: int | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Notifications leased for one delivery, in finish order; ``remaining`` counts those of
    the session still available after it (a reminder says how many are still to come)."""

    id: str
    session: str
    notifications: tuple[TaskNotification, ...]
    expires_at: float
    remaining: int = 0


@dataclass(frozen=True, slots=True)
class SessionCounts:
    """A session's counts at one instant. ``pending`` counts notifications available to a
    lease now; ``leased`` those in unexpired leases; ``next_expiry`` is the earliest expiry of
    an open lease (None without one)."""

    live: int
    running: int
    queued: int
    pending: int
    leased: int
    records: int
    next_expiry: float | None


# -- the protocol ---------------------------------------------------------------------------------


@runtime_checkable
class LedgerBackend(Protocol):
    """The atomic operations of the ledger. See the module docstring for the rules every
    operation keeps; each method's docstring gives its own.

    Operations that take a session refer to tasks by id (or, where said, by name); those that
    take a :class:`RunRef` find the run wherever it lives. Unknown ids and refs are never an
    error unless said: they change nothing.
    """

    url: str
    """Where the backend keeps its state, for messages (``memory://``, ``sqlite:///…``)."""

    blocking: bool
    """True when calls wait on I/O (a file, a server): async code then runs them in a worker
    thread instead of on its event loop."""

    def connect(self, listener: LedgerListener, *, now: float) -> str:
        """Start serving a store: return a fresh epoch id for its process and deliver effects
        to ``listener`` from now on."""
        ...

    def disconnect(self, epoch: str) -> None:
        """Stop delivering effects to the listener of ``epoch``; its runs stay as they are."""
        ...

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...

    # -- runs -------------------------------------------------------------------------------------

    def create(self, request: CreateRequest) -> Admission:
        """Register a new run of ``request.task_id`` in its session and assign its generation.

        Refused (nothing changes) with :class:`~followups.TaskIdInUse` by ``if_exists``, with
        :class:`~followups.NameInUse` when another live task of the session has the name, with
        :class:`AdmissionRefused` at the cap, and with :class:`~followups.PendingLimitReached`
        when the session has ``max_pending`` notifications waiting. Otherwise: a live record
        with the same id is superseded (its run can no longer report, and its owner is told to
        cancel it); at capacity the record that finished longest ago is evicted, or, when every
        record is live, the oldest live one (its owner is told to cancel it, by ``evicted``).
        Emits :class:`~followups.TaskRegistered`.
        """
        ...

    def start(self, ref: RunRef, *, now: float) -> bool:
        """The run begins to execute: records ``started_at`` and emits
        :class:`~followups.TaskStarted`. A queued run without a cap takes its start here.
        False if the run may not start: unknown, superseded, finished, still queued behind a
        cap, or with a cancel requested (a queued run cancelled before it started is finished
        by the cancel itself)."""
        ...

    def progress(self, ref: RunRef, message: str, *, now: float) -> bool:
        """Record the run's latest progress line; emits :class:`~followups.TaskProgress`.
        False if the run is not live."""
        ...

    def finish(self, ref: RunRef, report: FinishReport) -> bool:
        """Record the run's final state and queue or update its notification, in one step.

        Ignored (False) for an unknown, superseded or sealed run, and for a duplicate (same
        digest as the run's last report). A run keeps what it reported, even with a cancel
        requested that it finished before noticing. Finishing a live run frees its slot (the
        oldest queued run of the session is admitted and its owner told to start it), and asks
        the owners of its live children with close policy ``cancel`` to cancel them (by
        ``parent_finished``). The run's pending notification is updated in place (keeping its
        place in finish order, with a new version, and available again if it was leased), or a
        new one is queued after the others if it was already delivered. Emits
        :class:`~followups.TaskFinished`.
        """
        ...

    def request_cancel(
        self, session: str, selection: Selection, *, by: CancelledBy, reason: str, now: float
    ) -> CancelReport:
        """Ask for the cancellation of the selected live tasks. A queued task is finished
        cancelled at once; a running one is marked and its owner told to cancel it. Emits
        :class:`~followups.TaskCancelRequested` for each, and :class:`~followups.TaskFinished`
        for each queued one."""
        ...

    def cancel_all(self, session: str, *, reason: str, now: float) -> builtins.list[str]:
        """End a session's work: finish every live task cancelled with ``reason`` (by
        ``cancel_all``), sealed so its late report is ignored, tell the owners of the running
        ones to cancel them, and clear the session's pending notifications (leased ones too).
        A later :meth:`restore` does not bring back what was cleared. Returns the ids it
        cancelled; emits :class:`~followups.TaskFinished` for each."""
        ...

    def transfer(self, from_session: str, to_session: str, task_ids: Sequence[str] | None, *, now: float) -> builtins.list[str]:
        """Move live tasks (all of them, or those of ``task_ids``) and the undelivered
        notifications (all of the session's, or those of ``task_ids``) from ``from_session`` to
        ``to_session``, where they queue after its own, in their order. Runs keep their refs
        and leases keep their ids. Refused with :class:`~followups.TransferConflict`, moving
        nothing, if a moved live task's id or name is live in ``to_session``. Returns the ids
        of the live tasks moved; emits :class:`~followups.TaskTransferred` for each."""
        ...

    # -- inbox and questions ------------------------------------------------------------------------

    def send(self, session: str, target: str, message: str, *, now: float, max_messages: int) -> RunRef:
        """Put ``message`` in the inbox of the live task ``target`` (id or name) and tell its
        owner to read it. Raises :class:`~followups.UnknownTask`,
        :class:`~followups.TaskAlreadyFinished`, :class:`~followups.NoInbox`,
        :class:`~followups.InboxClosed` or :class:`~followups.InboxFull`. Returns the run's ref."""
        ...

    def take_inbox(self, ref: RunRef) -> builtins.list[str]:
        """Remove and return the run's unread messages, oldest first."""
        ...

    def close_inbox(self, ref: RunRef) -> None:
        """The run reads no more messages: later sends raise :class:`~followups.InboxClosed`."""
        ...

    def ask(self, ref: RunRef, question: str, *, now: float) -> str | None:
        """Queue a question from a live run as a notification of its session (kind
        ``question``); returns its notification id, or None if the run is not live."""
        ...

    # -- delivery -----------------------------------------------------------------------------------

    def lease(self, session: str, request: LeaseRequest) -> Lease | None:
        """Lease the available notifications that fit ``request`` (see :class:`LeaseRequest`);
        None when none is available. Leased notifications are not available to another lease
        until the lease is given back or expires."""
        ...

    def confirm(self, lease_id: str, *, now: float) -> int:
        """The lease's notifications were delivered: delete each one still at the version the
        lease took and not leased since by another lease. One re-reported since stays pending
        with its newer state. Idempotent; returns how many were deleted."""
        ...

    def give_back(self, lease_id: str, *, now: float, only: Collection[str] | None = None) -> int:
        """The lease's notifications (or those of ``only``, by notification id) were not
        delivered: make them available again, in their place. Idempotent; returns how many."""
        ...

    def acknowledge(self, session: str, notification_ids: Collection[str], *, now: float) -> int:
        """Delete these notifications, leased or not: they are known to have been delivered
        (a history that holds them was found). Returns how many were deleted."""
        ...

    def restore(self, session: str, notifications: Sequence[TaskNotification], *, now: float) -> int:
        """Queue again, at their places in finish order, notifications that were delivered and
        then turned out not to have been, unless ``cancel_all`` cleared the session since.
        A run with a newer pending notification keeps the newer state, moved to the restored
        place. Returns how many went back."""
        ...

    # -- maintenance --------------------------------------------------------------------------------

    def recover(self, *, now: float) -> int:
        """Reopen expired leases, and finish as failed "orphaned" the live runs of processes
        that are gone (durable backends). Returns how many runs it orphaned."""
        ...

    def gc_finished(self, session: str) -> int:
        """Remove the session's finished records, except those whose notification is still
        undelivered. Returns how many were removed."""
        ...

    # -- reads --------------------------------------------------------------------------------------

    def get(self, session: str, key: str) -> BackgroundTask | None:
        """The record with task id ``key``, else the live task named ``key``, else the most
        recent task named ``key``; None if the session has none."""
        ...

    def get_run(self, ref: RunRef) -> BackgroundTask | None:
        """The record of the run ``ref``, while it owns one."""
        ...

    def run_digest(self, ref: RunRef) -> str | None:
        """The digest of the run's last report, or None (unknown run, or not reported)."""
        ...

    def list(
        self, session: str | None, *, status: TaskStatus | None = None, kind: str | None = None, parent: str | None = None
    ) -> builtins.list[BackgroundTask]:
        """The records of ``session`` (None: every session), oldest first by creation, filtered
        by status, kind and parent task id."""
        ...

    def counts(self, session: str, *, now: float) -> SessionCounts:
        """The session's counts (see :class:`SessionCounts`)."""
        ...

    def leases(self, session: str, *, now: float) -> builtins.list[LeaseInfo]:
        """The session's open (unexpired) leases, oldest first."""
        ...

    def pending(self, session: str, *, now: float) -> builtins.list[TaskNotification]:
        """The session's available notifications in finish order, without leasing them."""
        ...

    def sessions(self) -> builtins.list[str]:
        """Every session that has a record or a pending notification."""
        ...

    def referenced_relay_paths(self) -> set[str]:
        """The relay files named by records or pending notifications: not to be removed."""
        ...

