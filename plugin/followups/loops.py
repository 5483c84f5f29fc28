"""``EventLoopHandle``: lets any thread hand a callback to one trio or asyncio event loop, which
runs it on its own thread. The only way ``followups`` calls into a loop from elsewhere."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import sniffio
import trio

__all__ = ["EventLoopHandle"]


class EventLoopHandle:
    """A running trio or asyncio loop, seen from any thread.

    :meth:`call_soon` may be called from any thread, the loop's own included, and never runs
    the callback inline: the loop runs it soon, on its thread, outside any task. Take a handle
    with :meth:`current` inside the loop.
    """

    __slots__ = ("_asyncio_loop", "_schedule", "library", "thread_id")

    def __init__(
        self,
        schedule: Callable[[Callable[[], object]], object],
        library: str,
        thread_id: int,
        asyncio_loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._schedule = schedule
        self.library = library
        self.thread_id = thread_id
        self._asyncio_loop = asyncio_loop

    @classmethod
    def current(cls) -> EventLoopHandle:
        """The loop running the calling task. ``RuntimeError`` outside trio and asyncio."""
        library = sniffio.current_async_library()
        if library == "trio":
            return cls(trio.lowlevel.current_trio_token().run_sync_soon, library, threading.get_ident())
        if library == "asyncio":
            loop = asyncio.get_running_loop()
            return cls(loop.call_soon_threadsafe, library, threading.get_ident(), loop)
        raise RuntimeError(f"followups supports trio and asyncio, not {library!r}")

    @classmethod
    def current_or_none(cls) -> EventLoopHandle | None:
        """The loop running on this thread, or None when this thread runs none."""
        try:
            return cls.current()
        except (sniffio.AsyncLibraryNotFoundError, RuntimeError):
            return None

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Have the loop run ``callback`` on its thread. Thread-safe; never raises. False when
        the loop has finished or closed (the callback will not run)."""
        try:
            self._schedule(callback)
        except (trio.RunFinishedError, RuntimeError):
            return False
        return True

    def call_soon_in_task(self, callback: Callable[[], object]) -> bool:
        """:meth:`call_soon`, but ``callback`` runs inside a task of the loop, as anyio needs
        for starting tasks or opening cancel scopes (asyncio runs plain callbacks outside any
        task; trio's may call those anyway)."""
        loop = self._asyncio_loop
        if loop is None:
            return self.call_soon(callback)

        async def in_task() -> None:
            callback()

        return self.call_soon(lambda: loop.create_task(in_task()))

    def __repr__(self) -> str:
        return f"<EventLoopHandle {self.library} thread={self.thread_id}>"
