"""Waking async waiters from any thread: ``LoopWaiter`` (one wait of one task) and
``ChangeSignal`` (a version number that waiters await a change of), on trio or asyncio alike."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel

from .loops import EventLoopHandle

__all__ = ["ChangeSignal", "LoopWaiter"]


class LoopWaiter:
    """One wait of one task, created in the task that will wait.

    :meth:`wake` may be called from any thread, including the event loop's own, any number
    of times, even after the loop has finished (then it does nothing). The wake-up is handed
    to the loop's thread-safe scheduler, so the waiting task resumes on its own loop.
    """

    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._loop = EventLoopHandle.current()

    def wake(self) -> None:
        """Make :meth:`wait` return. Thread-safe and idempotent; never raises."""
        self._loop.call_soon(self._event.set)

    async def wait(self) -> None:
        """Wait until :meth:`wake` has been called. A cancellation point."""
        await self._event.wait()


class ChangeSignal:
    """A counter of changes, and the tasks waiting for the next one.

    :meth:`bump` may be called from any thread; it never blocks and never raises. Waiting is
    race-free: read :attr:`version`, look at the state it guards, then
    :meth:`wait_beyond` that version; a change in between returns at once.
    """

    __slots__ = ("_lock", "_waiters", "version")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[LoopWaiter] = []
        self.version = 0

    def bump(self) -> None:
        with self._lock:
            self.version += 1
            if not self._waiters:
                return
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.wake()

    async def wait_beyond(self, version: int, timeout: float | None = None) -> bool:
        """Return True once :attr:`version` differs from ``version``, False when ``timeout``
        seconds pass first. Always a checkpoint; cancelling the wait changes nothing."""
        with anyio.move_on_after(timeout):
            while True:
                waiter = LoopWaiter()
                with self._lock:
                    if self.version != version:
                        break
                    self._waiters.append(waiter)
                try:
                    await waiter.wait()
                finally:
                    with self._lock:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
        await anyio.lowlevel.checkpoint()
        return self.version != version
