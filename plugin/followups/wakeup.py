"""``LoopWaiter``: an async task waits, any thread wakes it, under trio or asyncio alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import sniffio
import trio

__all__ = ["LoopWaiter"]


class LoopWaiter:
    """One wait of one task, created in the task that will wait.

    :meth:`wake` may be called from any thread, including the event loop's own, any number
    of times, even after the loop has finished (then it does nothing). The wake-up is handed
    to the loop's thread-safe scheduler, so the waiting task resumes on its own loop.
    """

    __slots__ = ("_event", "_schedule")

    def __init__(self) -> None:
        self._event = anyio.Event()
        library = sniffio.current_async_library()
        self._schedule: Callable[[Callable[[], object]], object]
        if library == "trio":
            self._schedule = trio.lowlevel.current_trio_token().run_sync_soon
        elif library == "asyncio":
            self._schedule = asyncio.get_running_loop().call_soon_threadsafe
        else:
            raise RuntimeError(f"followups supports trio and asyncio, not {library!r}")

    def wake(self) -> None:
        """Make :meth:`wait` return. Thread-safe and idempotent; never raises."""
        try:
            self._schedule(self._event.set)
        except RuntimeError:
            pass  # the loop has finished (trio.RunFinishedError) or closed: nobody is waiting

    async def wait(self) -> None:
        """Wait until :meth:`wake` has been called. A cancellation point."""
        await self._event.wait()
