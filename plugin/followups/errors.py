"""Every exception that ``followups`` raises on purpose."""

from __future__ import annotations

__all__ = ["CapacityExceeded", "FollowupsError", "TemplateError"]


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
    """A subagent could not be admitted because the pool is at its cap.

    The message is written for the model that asked for the subagent: it states the cap,
    how many subagents are in flight, and what to do instead of retrying in a loop.
    """

    def __init__(self, message: str, *, limit: int, in_flight: int):
        super().__init__(message)
        self.limit = limit
        self.in_flight = in_flight
