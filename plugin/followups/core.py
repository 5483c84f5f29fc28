"""``StoreCore``: what a store's sessions share. It connects to the ledger backend and applies
what the ledger reports back (wake waiters, carry out actions for local runs, publish events),
bounds reports before they reach the ledger, and keeps reports a durable backend could not
commit until it can."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .bounding import OutputBounds, report_digest
from .errors import StoreUnavailable
from .events import EventHub
from .ledger.labels import ReminderLabels, labels_for
from .ledger.protocol import BackendUnavailable, Effect, FinishReport, LedgerBackend, RunAction, SessionChanged
from .relay import OutputRelay
from .reminders import ReminderRenderer
from .runs import LocalRuns
from .settings import FollowupSettings
from .state import BackgroundTask, LifecycleEvent, RunRef, TaskState, TaskStatus
from .wakeup import ChangeSignal

if TYPE_CHECKING:
    from .store import BackgroundStore

__all__ = ["StoreCore"]

logger = logging.getLogger("followups.store")

_T = TypeVar("_T")
_P = ParamSpec("_P")
_RUNNING = TaskStatus.RUNNING
_RETRY_FIRST_SECONDS = 0.05
_RETRY_MAX_SECONDS = 5.0


def unavailable(exc: BackendUnavailable) -> StoreUnavailable:
    return StoreUnavailable(f"the task store at {exc.where} is unavailable: {exc}", where=exc.where)


class StoreCore:
    """The shared internals of one :class:`~followups.BackgroundStore` and its sessions.

    It is the backend's :class:`~followups.ledger.LedgerListener`: :meth:`apply` may be called
    from any thread and never blocks.
    """

    def __init__(
        self,
        store: BackgroundStore,
        settings: FollowupSettings,
        backend: LedgerBackend,
        relay: OutputRelay | None,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.settings = settings
        self.backend = backend
        self.relay = relay or OutputRelay.shared(settings)
        self.renderer: ReminderRenderer = self.relay.renderer
        self.bounds = OutputBounds(self.relay, settings.max_error_chars)
        self.hub = EventHub()
        self.local_runs = LocalRuns()
        self.kept = KeptReports(self)
        self.clock = clock
        self._signals: dict[str, ChangeSignal] = {}
        self._signals_lock = threading.Lock()
        self.owns_backend = False
        self._closed = False
        self._background: concurrent.futures.ThreadPoolExecutor | None = None
        # a backend's optional fast path for the current run of a task id (see Session.notify)
        self.current_ref: Callable[[str, str], RunRef | None] | None = getattr(backend, "current_ref", None)
        self.epoch = self.call(backend.connect, self, now=clock())
        self.labels: ReminderLabels = labels_for(backend)
        self._stop_referencing = self.relay.add_referenced_paths(backend.referenced_relay_paths)

    # -- LedgerListener -----------------------------------------------------------------------

    @property
    def wants_events(self) -> bool:
        return self.hub.wants_events

    def apply(self, effects: Sequence[Effect]) -> None:
        events: list[LifecycleEvent] | None = None
        signals = self._signals
        for effect in effects:
            kind = type(effect)
            if kind is SessionChanged:
                signal = signals.get(effect.session)  # type: ignore[union-attr]
                if signal is not None:
                    signal.bump()
            elif kind is RunAction:
                if effect.epoch == self.epoch:  # type: ignore[union-attr]
                    self.local_runs.handle(effect)  # type: ignore[arg-type]
            else:
                if events is None:
                    events = []
                events.append(effect)  # type: ignore[arg-type]
        if events:
            self.hub.publish(events)

    def missed(self, session: str, count: int) -> None:
        self.hub.missed(session, count)

    def signal(self, session: str) -> ChangeSignal:
        """The change signal of ``session``, bumped whenever its pending queue or live count
        changes (in this process or, for a shared backend, in another)."""
        signal = self._signals.get(session)
        if signal is None:
            with self._signals_lock:
                signal = self._signals.setdefault(session, ChangeSignal())
        return signal

    # -- calling the backend ------------------------------------------------------------------

    def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)``, a backend operation, with an unavailable backend translated
        into :class:`StoreUnavailable` (naming where the store is)."""
        try:
            return fn(*args, **kwargs)
        except BackendUnavailable as exc:
            raise unavailable(exc) from exc

    async def call_async(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """``fn(*args, **kwargs)`` from async code: in a worker thread when the backend blocks
        on I/O, else inline. Translates an unavailable backend into :class:`StoreUnavailable`."""
        try:
            if self.backend.blocking:
                return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
            return fn(*args, **kwargs)
        except BackendUnavailable as exc:
            raise unavailable(exc) from exc

    def in_background(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` without waiting for it: inline on a backend that never blocks, else
        on the store's background thread (calls keep their order). Errors are logged."""
        if not self.backend.blocking:
            _logged(fn, *args)
            return
        with self._signals_lock:
            if self._background is None:
                self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="followups-bg")
            executor = self._background
        executor.submit(_logged, fn, *args)

    # -- reports ------------------------------------------------------------------------------

    def prepare_report(self, ref: RunRef, state: TaskState) -> FinishReport | None:
        """Bound ``state`` for the ledger (relay or cap), or None for a repeat of the run's last
        report (recognised before anything is written). Blocking file I/O for large results."""
        digest = report_digest(state)
        bounds = self.bounds
        if not bounds.needs_bounding(state):
            return FinishReport(state, digest, self.clock())
        try:
            if self.backend.run_digest(ref) == digest:
                return None
        except BackendUnavailable:
            pass  # the finish itself decides, once the store answers again
        bounded = bounds.bound(f"task-{ref.task_id}", state)
        return FinishReport(bounded.state, digest, self.clock(), bounded.relay_path)

    def commit_report(self, ref: RunRef, report: FinishReport) -> bool:
        """Hand a prepared report to the ledger. If a durable backend cannot commit it, it is
        kept in memory (visible as ``persistence_error``) and retried: never raises for that."""
        if self.kept:
            self.kept.flush()
        try:
            return self.backend.finish(ref, report)
        except BackendUnavailable as exc:
            self.kept.keep(ref, report, exc)
            return True

    def report(self, ref: RunRef, state: TaskState) -> bool:
        """Bound and commit ``state`` on this thread."""
        report = self.prepare_report(ref, state)
        return report is not None and self.commit_report(ref, report)

    async def report_async(self, ref: RunRef, state: TaskState) -> bool:
        """:meth:`report` from async code. A result that is relayed, long, or reported to a
        blocking backend is handled in a worker thread, so the event loop never waits for the
        write. Shielded: a cancellation waits for the report, so it is never lost."""
        if not self.backend.blocking and not self.bounds.is_heavy(state):
            return self.report(ref, state)  # inline, with no checkpoint to shield
        applied = False
        with anyio.CancelScope(shield=True):
            applied = await anyio.to_thread.run_sync(self.report, ref, state)
        return applied

    # -- reads --------------------------------------------------------------------------------

    def present(self, task: BackgroundTask) -> BackgroundTask:
        """``task`` as users see it: with a report not yet committed, and whether it stalled."""
        kept = self.kept.lookup(task.ref) if self.kept else None
        if kept is not None:
            report, error = kept
            return dataclasses.replace(
                task,
                state=report.state,
                finished_at=report.now,
                relay_path=report.relay_path,
                persistence_error=error,
            )
        if task.state.status is _RUNNING and task.started_at is not None:
            last = task.progress_at if task.progress_at is not None else task.started_at
            if self.clock() - last > self.settings.stall_after_seconds:
                return dataclasses.replace(task, stalled=True)
        return task

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_referencing()
        self.kept.stop()
        if self._background is not None:
            self._background.shutdown(wait=True)
        self.backend.disconnect(self.epoch)
        if self.owns_backend:
            self.backend.close()


def _logged(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        logger.warning("background store call %s failed", getattr(fn, "__name__", fn), exc_info=True)


class KeptReports:
    """Final states the backend could not commit yet, retried on every access and on a timer
    (with backoff) until they are committed. Nothing is lost while the process lives."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._kept: dict[RunRef, tuple[FinishReport, str]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __bool__(self) -> bool:
        return bool(self._kept)

    def keep(self, ref: RunRef, report: FinishReport, exc: BackendUnavailable) -> None:
        logger.warning("could not persist the result of task %r (%s); keeping it and retrying", ref.task_id, exc)
        with self._lock:
            self._kept[ref] = (report, f"{exc} (at {exc.where}); retrying")
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._retry_loop, name="followups-retry", daemon=True)
                self._thread.start()
        self._publish()

    def lookup(self, ref: RunRef) -> tuple[FinishReport, str] | None:
        with self._lock:
            return self._kept.get(ref)

    def refs(self) -> list[RunRef]:
        with self._lock:
            return list(self._kept)

    def flush(self) -> bool:
        """Try to commit every kept report; True when none is left."""
        with self._lock:
            items = list(self._kept.items())
        backend = self._core.backend
        committed = False
        try:
            for ref, (report, _) in items:
                try:
                    backend.finish(ref, report)
                except BackendUnavailable as exc:
                    with self._lock:
                        if ref in self._kept:
                            self._kept[ref] = (report, f"{exc} (at {exc.where}); retrying")
                    return False
                with self._lock:
                    if self._kept.get(ref, (None,))[0] is report:
                        del self._kept[ref]
                        committed = True
            return not self._kept
        finally:
            if committed:
                self._publish()

    def _publish(self) -> None:
        """Tell a backend that shows other processes what this one could not commit yet (the
        SQLite backend's ``note_unpersisted``) the current set. Never raises."""
        note = getattr(self._core.backend, "note_unpersisted", None)
        if note is None:
            return
        with self._lock:
            errors = {ref: (report.state.status.value, error) for ref, (report, error) in self._kept.items()}
        try:
            note(self._core.epoch, errors)
        except Exception:
            logger.debug("could not publish the reports not yet committed", exc_info=True)

    def _retry_loop(self) -> None:
        delay = _RETRY_FIRST_SECONDS
        while not self._stopped:
            self._wake.wait(delay)
            if self._stopped:
                return
            if self.flush():
                with self._lock:
                    if not self._kept:
                        self._thread = None
                        return
            delay = min(delay * 2, _RETRY_MAX_SECONDS)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def __repr__(self) -> str:
        return f"<KeptReports {len(self._kept)}>"

