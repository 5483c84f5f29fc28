"""The values that describe a background task: its state, its record, its notification, and
the lifecycle events a UI sink receives. All are frozen and compare by value."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "BackgroundTask",
    "LifecycleEvent",
    "TaskFinished",
    "TaskNotification",
    "TaskStarted",
    "TaskState",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Every status but ``RUNNING`` is final."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task's status and the text that goes with it.

    ``text`` is the result for a completed task, the error for a failed one, the reason for a
    cancelled one, and empty while the task runs. Build states with the constructors.
    """

    status: TaskStatus
    text: str = ""

    def __post_init__(self) -> None:
        if type(self.status) is not TaskStatus:
            object.__setattr__(self, "status", TaskStatus(self.status))
        if not isinstance(self.text, str):
            raise TypeError(f"TaskState.text must be str, got {type(self.text).__name__}")

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
        return self.status is not _RUNNING_STATUS


_RUNNING_STATUS = TaskStatus.RUNNING
_RUNNING = TaskState(TaskStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class BackgroundTask:
    """A snapshot of one task record, as :meth:`BackgroundStore.get` returns it.

    ``queued`` is true while a live task waits for a concurrency slot and has not started.
    """

    id: str
    state: TaskState
    description: str = ""
    queued: bool = False


@dataclass(frozen=True, slots=True)
class TaskNotification:
    """A finished task's pending notification: a snapshot of its id and final state.

    ``sequence`` orders notifications by the time their task first finished; it takes no part
    in equality, so two notifications are equal when their id and state are.
    """

    id: str
    state: TaskState
    sequence: int = field(default=0, compare=False)


_new_object = object.__new__
_notification_slots = vars(TaskNotification)  # the member descriptors of its __slots__
_set_notification_id = _notification_slots["id"].__set__
_set_notification_state = _notification_slots["state"].__set__
_set_notification_sequence = _notification_slots["sequence"].__set__


def make_notification(id: str, state: TaskState, sequence: int) -> TaskNotification:
    """``TaskNotification(id, state, sequence)`` without the frozen dataclass's per-field
    ``object.__setattr__`` calls: the store builds one per finished task, on its hot path."""
    notification = _new_object(TaskNotification)
    _set_notification_id(notification, id)
    _set_notification_state(notification, state)
    _set_notification_sequence(notification, sequence)
    return notification


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A task began to run (after any wait for a concurrency slot)."""

    id: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A task reached a final state; the notification carries the relayed or capped state."""

    notification: TaskNotification

    @property
    def id(self) -> str:
        return self.notification.id


LifecycleEvent = TaskStarted | TaskFinished
