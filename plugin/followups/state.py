"""The values that describe background work: a task's status and state, the identity of one
run, the record of a task, its pending notification, an open delivery lease, and the lifecycle
events that subscribers and a UI sink receive. All are frozen and compare by value."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CANCELLED_BY",
    "CLOSE_POLICIES",
    "DEFAULT_SESSION",
    "BackgroundTask",
    "CancelledBy",
    "DeferredText",
    "ClosePolicy",
    "Lagged",
    "LeaseInfo",
    "LifecycleEvent",
    "NotificationKind",
    "RunRef",
    "TaskCancelRequested",
    "TaskFinished",
    "TaskKind",
    "TaskNotification",
    "TaskProgress",
    "TaskRegistered",
    "TaskStarted",
    "TaskState",
    "TaskStatus",
    "TaskTransferred",
    "check_kind",
]

DEFAULT_SESSION = "default"
"""The session of a store used without naming one."""


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. ``QUEUED`` and ``RUNNING`` are live; the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for completed, failed and cancelled: a status that is never left."""
        return self not in _LIVE_STATUSES


_LIVE_STATUSES = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})


class TaskKind(enum.StrEnum):
    """The built-in kinds of background work. Any other lowercase name (``"crawler"``) is a
    custom kind: see :func:`check_kind`."""

    SUBAGENT = "subagent"
    SHELL = "shell"
    MONITOR = "monitor"
    OBSERVER = "observer"
    OTHER = "other"


_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}", re.ASCII)


def check_kind(kind: str) -> str:
    """``kind`` as a plain string, or ``ValueError`` naming what is wrong with it.

    A kind is one of :class:`TaskKind` or a custom name of 1 to 64 characters: a lowercase
    ASCII letter, then lowercase letters, digits, ``_``, ``.`` or ``-``.
    """
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ValueError(
            f"kind must be one of {', '.join(k.value for k in TaskKind)} or a lowercase name like "
            f"'crawler' (letters, digits, '_', '.', '-'; at most 64 characters), got {kind!r}"
        )
    return str(kind)


ClosePolicy = Literal["keep", "cancel", "transfer"]
"""What happens to a live task when its session ends (or its parent finishes):
kept running, cancelled, or moved to the successor session."""
CLOSE_POLICIES: tuple[ClosePolicy, ...] = ("keep", "cancel", "transfer")

CancelledBy = Literal["user", "cancel_all", "session_closed", "parent_finished", "evicted", "orphaned"]
"""Who asked for a task's cancellation: a cancel call or tool (``user``), ``cancel_all``, the
end of its session or pool (``session_closed``), its parent finishing (``parent_finished``),
eviction from a full store (``evicted``), or recovery after its process stopped (``orphaned``)."""
CANCELLED_BY: tuple[CancelledBy, ...] = (
    "user",
    "cancel_all",
    "session_closed",
    "parent_finished",
    "evicted",
    "orphaned",
)


class DeferredText:
    """A text kept out of memory and rebuilt when read: a relayed result's preview, rebuilt
    from the file that holds the output (:mod:`followups.relay`).

    :meth:`render` returns the same text every time while its source is intact, and an honest
    notice otherwise; it never raises. ``length`` is the text's length in characters while its
    source is intact (a notice in its place is never longer). Thread-safe: rendering only
    reads."""

    __slots__ = ()

    @property
    def length(self) -> int:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError


class TaskState:
    """A task's status and the text that goes with it.

    ``text`` is the result for a completed task, the error for a failed one, the reason for a
    cancelled one, and empty while the task is live. Build states with the constructors.
    Frozen; equal when status and text are; hashable.

    A relayed result's text may be held as a :class:`DeferredText` (its preview, rebuilt from
    the file on each read of ``text``, so it costs no memory while it waits); ``text`` is
    always a ``str``, and the state pickles and copies as a plain one.
    """

    __slots__ = ("status", "_text")
    __match_args__ = ("status", "text")

    status: TaskStatus
    _text: str | DeferredText

    def __init__(self, status: TaskStatus | str, text: str = "") -> None:
        if type(status) is not TaskStatus:
            status = TaskStatus(status)
        if text.__class__ is not str and not isinstance(text, (str, DeferredText)):
            raise TypeError(f"TaskState.text must be str, got {type(text).__name__}")
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "_text", text)

    @classmethod
    def deferred(cls, status: TaskStatus, text: DeferredText) -> TaskState:
        """A state whose text is rebuilt from ``text`` whenever it is read."""
        if not isinstance(text, DeferredText):
            raise TypeError(f"TaskState.deferred needs a DeferredText, got {type(text).__name__}")
        return cls(status, text)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        text = self._text
        return text if text.__class__ is str else text.render()  # type: ignore[union-attr]

    @property
    def text_length(self) -> int:
        """``len(self.text)``, without rebuilding a deferred text."""
        text = self._text
        return len(text) if isinstance(text, str) else text.length

    @property
    def is_deferred(self) -> bool:
        """True when ``text`` is rebuilt on each read rather than held in memory."""
        return not isinstance(self._text, str)

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not TaskState:
            return NotImplemented
        assert isinstance(other, TaskState)
        return self.status is other.status and (self._text is other._text or self.text == other.text)

    def __hash__(self) -> int:
        return hash((self.status, self.text))

    def __repr__(self) -> str:
        return f"TaskState(status={self.status!r}, text={self.text!r})"

    def __reduce__(self) -> tuple[type[TaskState], tuple[TaskStatus, str]]:
        return (TaskState, (self.status, self.text))

    @classmethod
    def queued(cls) -> TaskState:
        return _QUEUED

    @classmethod
    def running(cls) -> TaskState:
        return _RUNNING

    @classmethod
    def completed(cls, text: str) -> TaskState:
        return cls(TaskStatus.COMPLETED, text)

    @classmethod
    def failed(cls, error: str) -> TaskState:
        return cls(TaskStatus.FAILED, error)

    @classmethod
    def cancelled(cls, reason: str) -> TaskState:
        return cls(TaskStatus.CANCELLED, reason)

    @property
    def is_finished(self) -> bool:
        """True for completed, failed and cancelled: a state that is never left."""
        return self.status not in _LIVE_STATUSES


_QUEUED = TaskState(TaskStatus.QUEUED)
_RUNNING = TaskState(TaskStatus.RUNNING)


@dataclass(frozen=True, slots=True, order=True)
class RunRef:
    """The identity of one run of a task: the session it was created in, its task id, and the
    generation the ledger assigned it.

    Generations are unique within a store, so a task id that is reused starts a run with a new
    identity: a report for a superseded run is recognised and ignored, and the results of both
    runs are delivered. A run keeps its identity when it is transferred to another session.
    """

    session: str
    task_id: str
    generation: int

    def __hash__(self) -> int:
        # Equal refs have equal generations; refs are dict keys on every operation of a run, and
        # hashing the generation alone spares a tuple and two string hashes each time.
        return hash(self.generation)

    def __str__(self) -> str:
        return f"{self.task_id}#{self.generation}"


@dataclass(frozen=True, slots=True)
class BackgroundTask:
    """A snapshot of one task record, as :meth:`Session.get` and :meth:`Session.list` return it.

    Times are seconds since the epoch (``time.time()``). ``progress`` is the last line the task
    reported and ``progress_at`` when; ``stalled`` is true for a running task that has reported
    nothing for ``settings.stall_after_seconds``. ``cancel_requested_by`` says who asked for its
    cancellation, if anyone did. ``persistence_error`` is set while its final state could not be
    written to a durable store (it is retried). ``relay_path`` names the file holding the whole
    output of a relayed result.
    """

    id: str
    state: TaskState
    description: str = ""
    session: str = DEFAULT_SESSION
    kind: str = TaskKind.SUBAGENT.value
    name: str | None = None
    parent: str | None = None
    generation: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress: str | None = None
    progress_at: float | None = None
    cancel_requested_by: CancelledBy | None = None
    close_policy: ClosePolicy = "cancel"
    persistence_error: str | None = None
    stalled: bool = False
    relay_path: str | None = None
    origin_session: str | None = None

    @property
    def status(self) -> TaskStatus:
        return self.state.status

    @property
    def queued(self) -> bool:
        """True while the task waits for a concurrency slot and has not started."""
        return self.state.status is TaskStatus.QUEUED

    @property
    def is_live(self) -> bool:
        return not self.state.is_finished

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or from start until now's snapshot for a running task;
        None before it started."""
        if self.started_at is None:
            return None
        end = self.finished_at
        return None if end is None else max(0.0, end - self.started_at)

    @property
    def ref(self) -> RunRef:
        """The identity of the run this record describes."""
        return RunRef(self.origin_session or self.session, self.id, self.generation)


NotificationKind = Literal["result", "question"]


@dataclass(frozen=True, slots=True)
class TaskNotification:
    """A pending notification: a snapshot of a task's id and final state (``kind="result"``), or
    a question a running task asks its session (``kind="question"``, the question in
    ``state.text``).

    ``notification_id`` is stable and unique within the store: a redelivery of the same
    notification carries the same id, and a newer state of the same task a new one. The other
    fields take no part in equality, so two notifications are equal when id and state are.
    """

    id: str
    state: TaskState
    sequence: int = field(default=0, compare=False)
    notification_id: str = field(default="", compare=False)
    session: str = field(default=DEFAULT_SESSION, compare=False)
    kind: NotificationKind = field(default="result", compare=False)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """An open delivery lease: notifications taken for one reminder and not yet settled.

    Settle it by ``id`` from anywhere (:meth:`Session.settle`); when ``expires_at`` passes
    unsettled, its notifications are pending again.
    """

    id: str
    session: str
    task_ids: tuple[str, ...]
    notification_ids: tuple[str, ...]
    expires_at: float


# -- lifecycle events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRegistered:
    """A task was created (queued or about to run)."""

    task: BackgroundTask

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def session(self) -> str:
        return self.task.session

    @property
    def kind(self) -> str:
        return self.task.kind


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A task began to run (after any wait for a concurrency slot)."""

    id: str
    session: str = DEFAULT_SESSION
    kind: str = TaskKind.SUBAGENT.value


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """A running task reported a line of progress. Progress never produces a reminder."""

    id: str
    message: str
    at: float
    session: str = DEFAULT_SESSION
    kind: str = TaskKind.SUBAGENT.value


@dataclass(frozen=True, slots=True)
class TaskCancelRequested:
    """Someone asked for a live task's cancellation; it is carried out by the process that runs
    it, and a :class:`TaskFinished` follows."""

    id: str
    by: CancelledBy
    reason: str
    session: str = DEFAULT_SESSION
    kind: str = TaskKind.SUBAGENT.value


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A task reached a final state; the notification carries the relayed or capped state."""

    notification: TaskNotification
    kind: str = TaskKind.SUBAGENT.value

    @property
    def id(self) -> str:
        return self.notification.id

    @property
    def session(self) -> str:
        return self.notification.session


@dataclass(frozen=True, slots=True)
class TaskTransferred:
    """A live task moved from one session to its successor."""

    id: str
    from_session: str
    session: str
    kind: str = TaskKind.SUBAGENT.value


@dataclass(frozen=True, slots=True)
class Lagged:
    """A subscriber's buffer overflowed: ``count`` events were dropped for it (and only for it;
    notifications are never affected)."""

    count: int


LifecycleEvent = TaskRegistered | TaskStarted | TaskProgress | TaskCancelRequested | TaskFinished | TaskTransferred
