"""Every exception that ``followups`` raises on purpose. Each message says what is wrong and,
where there is a choice, what to do instead.

The ledger's errors build their own messages from their fields, so every backend words them
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CapacityExceeded",
    "FollowupsError",
    "InboxClosed",
    "InboxError",
    "InboxFull",
    "NameInUse",
    "NoInbox",
    "PendingLimitReached",
    "PoolClosed",
    "StoreUnavailable",
    "TaskAlreadyFinished",
    "TaskIdInUse",
    "TemplateError",
    "TransferConflict",
    "UnknownTask",
]


class FollowupsError(Exception):
    """Base class of the exceptions raised by ``followups``."""


class TemplateError(FollowupsError, ValueError):
    """A reminder template could not be loaded or compiled.

    Raised when a :class:`~followups.ReminderRenderer` is built, never at the first
    notification. ``filename`` and ``lineno`` say where the problem is, when known.
    """

    def __init__(self, message: str, *, filename: str | None = None, lineno: int | None = None):
        super().__init__(message)
        self.filename = filename
        self.lineno = lineno


class CapacityExceeded(FollowupsError):
    """A subagent could not be admitted because its session is at the concurrency cap.

    The message is written for the model that asked for the subagent: it states the cap,
    how many subagents are in flight, and what to do instead of retrying in a loop.
    """

    def __init__(self, message: str, *, limit: int, in_flight: int):
        super().__init__(message)
        self.limit = limit
        self.in_flight = in_flight


class PendingLimitReached(CapacityExceeded):
    """A new task was refused because ``max_pending`` notifications of its session wait to be
    delivered. Tasks already admitted still report; deliver the pending results first."""

    def __init__(self, *, pending: int, limit: int):
        super().__init__(
            f"Cannot start another background task: {pending} finished results are still waiting to be "
            f"delivered (the limit is {limit}). Read the pending results first; they arrive in "
            f"<system-reminder> messages at the next turns.",
            limit=limit,
            in_flight=pending,
        )
        self.pending = pending


class NameInUse(FollowupsError, ValueError):
    """A task name is reserved, or another live task of the session already has it."""

    def __init__(self, name: str, *, task_id: str | None = None, reserved: bool = False):
        if reserved:
            message = f"task name {name!r} is reserved; choose another name"
        else:
            message = f"task name {name!r} is already used by live task {task_id!r}; choose another name"
        super().__init__(message)
        self.name = name
        self.task_id = task_id
        self.reserved = reserved


class TaskIdInUse(FollowupsError, ValueError):
    """A task id that must be fresh is already taken in the session."""

    def __init__(self, task_id: str, *, status: str):
        live = status in ("queued", "running")
        super().__init__(
            f"task id {task_id!r} is already {'in use by a live task' if live else 'taken'} "
            f"(status: {status}); choose another id"
        )
        self.task_id = task_id
        self.status = status


class PoolClosed(FollowupsError, RuntimeError):
    """A subagent was spawned on a pool that is not open: before ``async with``, after it,
    or while it shuts down."""


class TransferConflict(FollowupsError, ValueError):
    """A transfer would put two live tasks with one id or one name in the successor session.
    Nothing was moved."""

    def __init__(self, to_session: str, *, ids: Sequence[str] = (), names: Sequence[str] = ()):
        parts = [f"live task {id!r}" for id in ids] + [f"live task name {name!r}" for name in names]
        super().__init__(
            f"cannot transfer to session {to_session!r}: it already has {', '.join(parts)}; nothing was moved"
        )
        self.ids = tuple(ids)
        self.names = tuple(names)


class UnknownTask(FollowupsError, LookupError):
    """No task with this id or name is known to the session. A task of another session looks
    exactly like this, so ids cannot be probed across sessions."""

    def __init__(self, task: str):
        super().__init__(f"Unknown task {task!r}: no task with this id or name is known")
        self.task = task


class InboxError(FollowupsError):
    """A message could not be delivered to a task's inbox."""

    def __init__(self, message: str, *, task: str):
        super().__init__(message)
        self.task = task


class TaskAlreadyFinished(InboxError):
    """The task has finished; ``status`` says how."""

    def __init__(self, task: str, *, status: str):
        super().__init__(f"Task {task!r} is not running (current status: {status})", task=task)
        self.status = status


class NoInbox(InboxError):
    """The task has no inbox: it is not a subagent run by a pool (an external task, a shell)."""

    def __init__(self, task: str):
        super().__init__(f"Task {task!r} has no inbox: only subagents run by a pool read messages", task=task)


class InboxClosed(InboxError):
    """The subagent closed its inbox and reads no more messages."""

    def __init__(self, task: str):
        super().__init__(f"Task {task!r} has closed its inbox and reads no more messages", task=task)


class InboxFull(InboxError):
    """The task's inbox holds as many unread messages as it may; wait for it to read them."""

    def __init__(self, task: str, *, limit: int):
        super().__init__(
            f"Task {task!r} already has {limit} unread messages; wait until it has read them", task=task
        )
        self.limit = limit


class StoreUnavailable(FollowupsError):
    """The durable store could not be reached or did not answer in time.

    ``where`` names it (host and port, or the database file). Nothing pending is lost: the
    notifications stay in the store and are delivered once it answers again.
    """

    def __init__(self, message: str, *, where: str):
        super().__init__(message)
        self.where = where
