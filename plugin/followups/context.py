"""``TaskContext``: what a running subagent knows of itself. Its id and session, a way to report
progress, its inbox of messages from the agent that runs it, and a way to ask that agent a
question. The pool passes it as the ``ctx`` keyword argument to a subagent that accepts one,
and :func:`current_task` returns it from anywhere inside the run."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .errors import InboxClosed
from .state import RunRef
from .wakeup import ChangeSignal

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Inbox", "TaskContext", "current_task", "running_as"]

_current: ContextVar[TaskContext | None] = ContextVar("followups_current_task", default=None)


def current_task() -> TaskContext | None:
    """The context of the subagent run the caller is inside, or None outside any."""
    return _current.get()


class Inbox:
    """Messages sent to a running subagent (with :meth:`Session.send` or the ``send_message``
    tool), oldest first: ``await ctx.inbox.receive()``, or ``async for message in ctx.inbox``.

    Read it from the subagent's own task. :meth:`close` says it reads no more: later sends fail
    with :class:`~followups.InboxClosed`, and an ``async for`` ends once what is queued is read.
    """

    def __init__(self, session: Session, ref: RunRef) -> None:
        self._session = session
        self._ref = ref
        self._lock = threading.Lock()
        self._messages: deque[str] = deque()
        self._signal = ChangeSignal()
        self._closed = False

    def deliver(self, messages: list[str]) -> None:
        """Queue messages the ledger handed over. Any thread."""
        if not messages:
            return
        with self._lock:
            self._messages.extend(messages)
        self._signal.bump()

    def fetch(self) -> None:
        """Take this run's unread messages from the ledger into the inbox. Any thread; blocks on
        a durable backend's I/O, so it is called off the event loop there."""
        self.deliver(self._session._core.backend.take_inbox(self._ref))

    def receive_nowait(self) -> str | None:
        with self._lock:
            return self._messages.popleft() if self._messages else None

    async def receive(self) -> str:
        """The next message, waiting for one. Raises :class:`~followups.InboxClosed` once the
        inbox is closed and empty. A cancellation point; cancelling loses no message."""
        while True:
            version = self._signal.version
            message = self.receive_nowait()
            if message is not None:
                return message
            if self._closed:
                raise InboxClosed(self._ref.task_id)
            await self._signal.wait_beyond(version)

    def close(self) -> None:
        """Read no more messages. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._session._core.backend.close_inbox(self._ref)
        self._signal.bump()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            try:
                yield await self.receive()
            except InboxClosed:
                return

    def __len__(self) -> int:
        return len(self._messages)


class TaskContext:
    """The running subagent's own handle on its task. Use it from the subagent's task."""

    def __init__(self, session: Session, ref: RunRef, *, name: str | None, description: str, kind: str) -> None:
        self.session = session
        self.ref = ref
        self.name = name
        self.description = description
        self.kind = kind
        self.inbox = Inbox(session, ref)

    @property
    def task_id(self) -> str:
        return self.ref.task_id

    def report_progress(self, message: str) -> None:
        """Record a line of progress: shown by ``task_status`` and ``list_tasks`` and sent to
        subscribers as :class:`~followups.TaskProgress`. Never produces a reminder, never blocks
        (on a durable backend the write happens in the background) and never raises for an
        unreachable store."""
        self.session._core.in_background(self.session.report_progress, self.ref, message)

    async def ask_parent(self, question: str) -> str:
        """Ask the agent that runs this task a question and wait for its answer. The question
        arrives in that session's next reminder, saying it comes from this task and how to
        answer; the answer (sent with ``send_message``) is what this returns. The task stays
        live while it waits."""
        core = self.session._core
        await core.call_async(core.backend.ask, self.ref, question, now=core.clock())
        return await self.inbox.receive()

    def __repr__(self) -> str:
        return f"<TaskContext {self.ref}>"


@contextlib.contextmanager
def running_as(context: TaskContext) -> Iterator[None]:
    """Make ``context`` what :func:`current_task` returns inside the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
