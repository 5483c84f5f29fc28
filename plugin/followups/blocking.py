"""``BlockingPool``: a :class:`~followups.SubagentPool` for synchronous code. The pool runs on an
event loop of its own, in a thread it starts, reached through an anyio blocking portal; the
caller's threads never need an event loop.

Synchronous entry points of the frameworks use it: LangChain's ``agent.invoke``, pydantic-ai's
``agent.run_sync``, the OpenAI Agents SDK's ``run_sync``, a synchronous Anthropic loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import sniffio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .pool import Subagent, SubagentPool
from .session import CANCELLED_BY_REQUEST, DEFAULT_CANCEL_REASON, Session

__all__ = ["BlockingPool", "thread_runs_event_loop", "wait_for_notification_blocking"]

T = TypeVar("T")


class BlockingPool:
    """A :class:`~followups.SubagentPool` of ``store`` running on its own event-loop thread.

    ``with BlockingPool(store, max_concurrent=4) as pool:`` starts a thread running an event
    loop (``backend="asyncio"`` or ``"trio"``), enters a ``SubagentPool(store, **options)`` there
    and returns; leaving the block closes the pool on that loop (cancelling or waiting for its
    subagents, per its ``close`` option) and then stops the thread. The subagents run on that
    loop, so they are async callables as with :class:`~followups.SubagentPool`.

    Thread-safety: every method may be called from any thread, concurrently. ``spawn``,
    ``cancel``, ``cancel_all`` and the counts never wait for the loop. :meth:`call`,
    :meth:`wait_for_notification` and :meth:`wait_for_change` block the calling thread until
    the loop has answered; calling them from the pool's own loop thread (inside a subagent)
    raises ``RuntimeError``, since the loop would wait for itself.

    :attr:`pool` is the underlying ``SubagentPool``: pass it to :func:`followups.task_tools` and
    to the adapters' tool builders; their ``task`` tool spawns from whatever thread the framework
    runs tools on. Starting twice raises ``RuntimeError``; closing is idempotent, and a spawn
    after closing raises :class:`~followups.PoolClosed`. If closing the pool raises (a subagent
    raised a ``BaseException``), the error propagates once the thread has stopped.
    """

    def __init__(self, store: Session, *, backend: Literal["asyncio", "trio"] = "asyncio", **options: Any) -> None:
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        self._pool = SubagentPool(store, **options)
        self.backend = backend
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def pool(self) -> SubagentPool:
        """The ``SubagentPool`` this runs (for ``task_tools`` and the adapters' tool builders)."""
        return self._pool

    @property
    def session(self) -> Session:
        """The session the subagents report to."""
        return self._pool.session

    @property
    def store(self) -> Session:
        """The same as :attr:`session` (named ``store`` like the pool's)."""
        return self._pool.session

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the loop thread and enter the pool there; returns once subagents can be
        spawned. ``RuntimeError`` if already started."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a BlockingPool can be started only once")
            stack = contextlib.ExitStack()
            try:
                portal = stack.enter_context(start_blocking_portal(self.backend, name="followups-pool"))
                stack.enter_context(portal.wrap_async_context_manager(self._pool))
            except BaseException:
                stack.close()
                self._state = "closed"
                raise
            self._stack = stack
            self._portal = portal
            self._state = "open"
        return self

    def close(self) -> None:
        """Close the pool on its loop, then stop the loop thread. Blocks until both are done.
        Idempotent; must not be called from the pool's loop thread."""
        with self._lock:
            if self._state != "open":
                self._state = "closed"
                return
            stack, self._stack = self._stack, None
            self._state = "closed"
        assert stack is not None
        stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the pool, from any thread ----------------------------------------------------------

    def spawn(self, fn: Subagent, *args: Any, **options: Any) -> str:
        """:meth:`SubagentPool.spawn` (same options): returns the task id at once; the subagent
        runs on the pool's loop."""
        return self._pool.spawn(fn, *args, **options)

    def cancel(self, task_id: str, reason: str = CANCELLED_BY_REQUEST) -> bool:
        """:meth:`SubagentPool.cancel`."""
        return self._pool.cancel(task_id, reason)

    def cancel_all(self, reason: str = DEFAULT_CANCEL_REASON) -> list[str]:
        """:meth:`SubagentPool.cancel_all`."""
        return self._pool.cancel_all(reason)

    def running_count(self) -> int:
        return self._pool.running_count()

    def queued_count(self) -> int:
        return self._pool.queued_count()

    def live_count(self) -> int:
        return self._pool.live_count()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the pool's loop and return its result (or raise its
        exception) on the calling thread. ``RuntimeError`` if the pool is not open or when
        called from the loop's own thread."""
        portal = self._portal
        if self._state != "open" or portal is None:
            raise RuntimeError("BlockingPool.call needs an open pool: use it inside `with BlockingPool(...)`")
        return portal.call(fn, *args)

    def wait_for_notification(self, timeout: float | None = None) -> bool:
        """:meth:`Session.wait_for_notification`, blocking the calling thread."""
        return self.call(self._pool.wait_for_notification, timeout)

    def wait_for_change(self, timeout: float | None = None) -> bool:
        """:meth:`Session.wait_for_change`, blocking the calling thread."""
        return self.call(self._pool.wait_for_change, timeout)

    def __repr__(self) -> str:
        return f"<BlockingPool {self._state} backend={self.backend} session={self._pool.session.id!r}>"


def thread_runs_event_loop() -> str | None:
    """The event loop library running on this thread ("asyncio", "trio"), or None."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def wait_for_notification_blocking(session: Session, timeout: float | None = None) -> bool:
    """:meth:`Session.wait_for_notification` for a thread that runs no event loop (the sync
    hooks of a framework): it runs the wait on a short-lived loop of this thread and blocks.
    Raises ``RuntimeError`` when called on a thread that runs an event loop, which it would
    block."""
    library = thread_runs_event_loop()
    if library is not None:
        raise RuntimeError(
            f"a blocking wait was called on a thread running a {library} event loop; use the async form"
        )
    return anyio.run(session.wait_for_notification, timeout)
