"""``LocalRuns``: what this process holds of the runs it executes, and nothing more: for each
run, the handler that carries out a cancel, a start or an inbox delivery on the run's own loop.

The ledger decides; a :class:`~followups.ledger.RunAction` for this process's epoch arrives here,
from whatever thread made the change, and the handler hops to its loop to act.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .ledger.protocol import RunAction
from .loops import EventLoopHandle
from .state import RunRef

__all__ = ["CancelHandle", "LocalRuns", "RunHandler"]

logger = logging.getLogger("followups.runs")


class RunHandler(Protocol):
    """Carries out the ledger's actions for one local run. Each method is called from any
    thread, must not block, and hops to the run's loop itself."""

    def on_cancel(self, reason: str) -> None: ...

    def on_start(self) -> None: ...

    def on_inbox(self) -> None: ...


class LocalRuns:
    """The handlers of the runs this process executes, by run. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[RunRef, RunHandler] = {}

    def add(self, ref: RunRef, handler: RunHandler) -> RunHandler | None:
        """Register ``handler`` for ``ref``; returns the handler it replaced, if any."""
        with self._lock:
            previous = self._handlers.get(ref)
            self._handlers[ref] = handler
            return previous

    def discard(self, ref: RunRef) -> None:
        if ref not in self._handlers:  # most reports come from runs never registered here
            return
        with self._lock:
            self._handlers.pop(ref, None)

    def __len__(self) -> int:
        return len(self._handlers)

    def handle(self, action: RunAction) -> None:
        """Hand ``action`` to its run's handler; an action for a run not held here is ignored
        (another process's, or one that already ended). Never raises."""
        handler = self._handlers.get(action.ref)
        if handler is None:
            return
        try:
            if action.action == "cancel":
                handler.on_cancel(action.reason)
            elif action.action == "start":
                handler.on_start()
            else:
                handler.on_inbox()
        except Exception:
            logger.exception("carrying out %s for run %s failed", action.action, action.ref)


class CancelHandle:
    """A handler for a run executed outside a pool: its ``handle.cancel()`` (an anyio or trio
    ``CancelScope``, an ``asyncio.Task``, a ``concurrent.futures.Future``…) is called on the loop
    it was attached on, or on the calling thread when it was attached outside any loop."""

    def __init__(self, handle: Any, runs: LocalRuns, ref: RunRef) -> None:
        if not callable(getattr(handle, "cancel", None)):
            raise TypeError(f"handle must have a cancel() method, got {type(handle).__name__}")
        self.handle = handle
        self._loop = EventLoopHandle.current_or_none()
        self._runs = runs
        self._ref = ref

    def on_cancel(self, reason: str) -> None:
        self._runs.discard(self._ref)
        self.cancel_now()

    def cancel_now(self) -> None:
        loop = self._loop
        if loop is None or loop.in_loop_thread() or not loop.call_soon(self._cancel):
            self._cancel()

    def _cancel(self) -> None:
        try:
            self.handle.cancel()
        except Exception:
            logger.warning("cancelling task handle %r failed", self.handle, exc_info=True)

    def on_start(self) -> None:
        pass

    def on_inbox(self) -> None:
        pass
