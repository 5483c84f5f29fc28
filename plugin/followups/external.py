"""External tasks: work that runs elsewhere (a shell process, a remote job, another service)
but lives in the ledger like a subagent: listed, cancellable, reporting progress, and
delivering its final state as a notification."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CapacityExceeded, TaskIdInUse
from .ledger.protocol import AdmissionRefused
from .loops import EventLoopHandle
from .state import ClosePolicy, RunRef, TaskState

if TYPE_CHECKING:
    from .session import Session

__all__ = ["ExternalTask", "TaskSpec", "register_external"]

logger = logging.getLogger("followups.external")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What an external task is: its id (None draws a fresh one), kind, optional unique name,
    description, parent task, and what happens to it when its session ends."""

    id: str | None = None
    kind: str = "other"
    name: str | None = None
    description: str = ""
    parent: str | None = None
    close_policy: ClosePolicy = "keep"


class ExternalTask:
    """The handle of a registered external task: report progress, then finish it once.

    ``cancel`` (given at registration) is called when a cancel is requested, from any thread or
    process: on the loop the task was registered on, or on the requesting thread when it was
    registered outside any loop. It should stop the work. Then, with ``finish_on_cancel``, the
    task is finished cancelled at once; without, the work reports its own final state with
    :meth:`finish` once it has stopped (a shell that includes its output, say).
    """

    def __init__(
        self, session: Session, ref: RunRef, cancel: Callable[[], object] | None, *, finish_on_cancel: bool
    ) -> None:
        self.session = session
        self.ref = ref
        self._cancel = cancel
        self._finish_on_cancel = finish_on_cancel
        self._loop = EventLoopHandle.current_or_none()
        self.cancel_reason: str | None = None

    @property
    def id(self) -> str:
        return self.ref.task_id

    def report_progress(self, message: str) -> bool:
        """Record a line of progress (never a reminder). False once the task is not live."""
        return self.session.report_progress(self.ref, message)

    def finish(self, state: TaskState) -> bool:
        """Record the final state (bounded like a subagent's result: relayed or capped) and
        queue its notification. False if it was already finished or is no longer known."""
        applied = self.session.notify(self.ref, state)
        self.session._core.local_runs.discard(self.ref)
        return applied

    # RunHandler
    def on_cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        loop = self._loop
        if loop is None or loop.in_loop_thread() or not loop.call_soon(self._carry_out_cancel):
            self._carry_out_cancel()

    def _carry_out_cancel(self) -> None:
        if self._cancel is not None:
            try:
                self._cancel()
            except Exception:
                logger.warning("the cancel callback of external task %r failed", self.id, exc_info=True)
        if self._finish_on_cancel:
            self.finish(TaskState.cancelled(self.cancel_reason or "cancelled"))

    def on_start(self) -> None:
        pass

    def on_inbox(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ExternalTask {self.ref}>"


def register_external(
    session: Session,
    spec: TaskSpec,
    *,
    cancel: Callable[[], object] | None = None,
    use_slot: bool = False,
    finish_on_cancel: bool = True,
) -> ExternalTask:
    """Register an external task in ``session`` and return its handle; it is running from now.

    ``cancel`` and ``finish_on_cancel``: see :class:`ExternalTask`. ``use_slot`` makes it take one of the session's ``max_concurrent`` slots (refused with
    :class:`~followups.CapacityExceeded` at the cap). Raises like :meth:`Session.insert` for a
    bad spec; an explicit ``spec.id`` that is live raises :class:`~followups.TaskIdInUse`.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec, got {type(spec).__name__}")
    if cancel is not None and not callable(cancel):
        raise TypeError(f"cancel must be a callable or None, got {type(cancel).__name__}")
    settings = session.settings
    for _ in range(1000):
        task_id = spec.id if spec.id is not None else secrets.token_hex(4)
        request = session._request(
            task_id,
            description=spec.description,
            kind=spec.kind,
            name=spec.name,
            parent=spec.parent,
            close_policy=spec.close_policy,
            if_exists="refuse_live" if spec.id is not None else "refuse",
            max_running=settings.max_concurrent if use_slot else None,
        )
        try:
            admission = session.create(request)
        except TaskIdInUse:
            if spec.id is not None:
                raise
            continue
        except AdmissionRefused as refused:
            raise CapacityExceeded(
                f"Cannot start another background task: {refused.running} of {settings.max_concurrent} "
                f"slots are in use. Wait for a completion notice before starting another.",
                limit=settings.max_concurrent,
                in_flight=refused.running,
            ) from None
        break
    else:
        raise RuntimeError("1000 random task ids were all in use")
    task = ExternalTask(session, admission.ref, cancel, finish_on_cancel=finish_on_cancel)
    session._core.local_runs.add(admission.ref, task)
    session.notify_started(admission.ref)
    return task
