"""``SubagentPool``: run a session's subagents in the background on anyio (trio or asyncio),
never more than ``max_concurrent`` at once, and report each one's outcome to the ledger.

The pool keeps no lifecycle state of its own. The ledger admits each run (the cap check and the
registration are one atomic step), queues it, starts it, cancels it and records its end; the
pool holds only what cannot leave this process: each local run's function and cancel scope.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import secrets
import threading
import types
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio
from pydantic import BaseModel

from .context import TaskContext, current_task, running_as
from .errors import CapacityExceeded, PoolClosed, TaskIdInUse
from .ledger.protocol import AdmissionRefused, Selection
from .loops import EventLoopHandle
from .session import CANCELLED_BY_REQUEST, DEFAULT_CANCEL_REASON, SESSION_CLOSED, Session
from .state import ClosePolicy, RunRef, TaskState, TaskStatus
from .wakeup import ChangeSignal

__all__ = ["CANCELLED_BY_REQUEST", "SESSION_CLOSED", "SubagentPool", "describe_exception", "render_result"]

Subagent = Callable[..., Awaitable[Any]]
_AMBIENT: Any = object()


class _LocalRun:
    """One run this pool executes: what the ledger's actions for it act on, on the pool's loop."""

    __slots__ = ("args", "context", "fn", "launched", "pass_ctx", "pool", "reason", "ref", "scope", "timeout")

    def __init__(
        self, pool: SubagentPool, ref: RunRef, fn: Subagent, args: tuple[Any, ...], timeout: float | None, context: TaskContext
    ) -> None:
        self.pool = pool
        self.ref = ref
        self.fn = fn
        self.args = args
        self.timeout = timeout
        self.context = context
        self.pass_ctx = _accepts_ctx(fn)
        self.scope: anyio.CancelScope | None = None  # made on the loop, when the run is launched
        self.reason: str | None = None  # the first cancel's reason
        self.launched = False

    # RunHandler: called from any thread
    def on_cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.pool._on_loop(self._cancel_now)

    @property
    def cancelled_state(self) -> TaskState:
        return TaskState.cancelled(self.reason or SESSION_CLOSED)

    def _cancel_now(self) -> None:
        if self.scope is None:
            self.pool._drop(self)
        else:
            self.scope.cancel()

    def on_start(self) -> None:
        self.pool._on_loop(lambda: self.pool._launch(self))

    def on_inbox(self) -> None:
        self.pool.session._core.in_background(self.context.inbox.fetch)


class SubagentPool:
    """Capped concurrent subagents of one session, inside ``async with``.

    ``spawn`` admits a subagent atomically in the ledger, so any number of parallel tool calls,
    from any threads (and, on a shared backend, any processes), never run more than
    ``max_concurrent`` subagents of the session. At the cap, ``when_full="reject"`` raises
    :class:`CapacityExceeded` and ``when_full="queue"`` queues the subagent (FIFO, at most
    ``max_queued``; queued subagents are live records, so the bound keeps them from being
    evicted).

    Outcomes: a returned string completes the task; a returned final
    :class:`~followups.TaskState` is the task's state as it is; any other value completes it
    with the value rendered as text (:func:`render_result`); an exception fails it with ``Type: message``
    (whatever its ``__str__`` does); a timeout fails it saying so; a cancellation from the
    ledger (``cancel``, ``cancel_all``, a cancel tree, the pool closing) cancels it; a
    cancellation that comes from elsewhere (a future someone else cancelled) fails it. One
    subagent's failure never affects another or the pool; only ``BaseException`` such as
    ``KeyboardInterrupt`` propagates.

    A subagent that accepts a ``ctx`` keyword gets its :class:`~followups.TaskContext`
    (progress, inbox, ``ask_parent``); :func:`followups.current_task` returns it anywhere in
    the run, and a subagent it spawns becomes its child.

    Leaving the block cancels the subagents still running or queued (``close="cancel"``) or
    waits for them all (``close="wait"``; they may still spawn children meanwhile). If the
    block raises, they are cancelled either way. A spawn that arrives while the pool shuts down
    is refused with :class:`~followups.PoolClosed`. An exception raised inside the block comes
    out wrapped in an ``ExceptionGroup``, as anyio task groups do.

    Threads: ``spawn``, ``cancel`` and ``cancel_all`` may be called from any thread and never
    wait for the pool's loop; the ledger's actions reach the loop through its thread-safe entry.
    """

    def __init__(
        self,
        store: Session,
        *,
        max_concurrent: int | None = None,
        when_full: Literal["reject", "queue"] = "reject",
        max_queued: int | None = None,
        close: Literal["cancel", "wait"] = "cancel",
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        if not isinstance(store, Session):
            raise TypeError(f"store must be a BackgroundStore or one of its sessions, got {type(store).__name__}")
        capacity = store.settings.capacity
        self.session = store
        self.max_concurrent = store.settings.max_concurrent if max_concurrent is None else max_concurrent
        if isinstance(self.max_concurrent, bool) or not 1 <= self.max_concurrent <= capacity:
            raise ValueError(
                f"max_concurrent must be between 1 and the store's capacity ({capacity}), got {self.max_concurrent}"
            )
        if when_full not in ("reject", "queue"):
            raise ValueError(f"when_full must be 'reject' or 'queue', got {when_full!r}")
        if close not in ("cancel", "wait"):
            raise ValueError(f"close must be 'cancel' or 'wait', got {close!r}")
        room = capacity - self.max_concurrent
        self.max_queued = room if max_queued is None else max_queued
        if isinstance(self.max_queued, bool) or not 0 <= self.max_queued <= room:
            raise ValueError(
                f"max_queued must be between 0 and capacity - max_concurrent ({room}), got {self.max_queued}: "
                "a queued task is a live store record and must never be evicted"
            )
        self.when_full = when_full
        self.close = close
        self._id_factory = id_factory or _random_id
        self._lock = threading.Lock()
        self._runs: dict[RunRef, _LocalRun] = {}
        self._drained = ChangeSignal()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loop: EventLoopHandle | None = None
        self._state: Literal["new", "open", "closing", "closed"] = "new"

    @property
    def store(self) -> Session:
        """The session this pool runs subagents for (a store is its default session)."""
        return self.session

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a SubagentPool can be entered only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._loop = EventLoopHandle.current()
        self.session._core.hub.bind_loop(self._loop)
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._state = "closing"
        try:
            if self.close == "cancel" or exc is not None:
                self._cancel_own(SESSION_CLOSED)
            with anyio.CancelScope(shield=exc is not None):
                while self._runs:
                    version = self._drained.version
                    if self._runs:
                        await self._drained.wait_beyond(version)
        finally:
            self._state = "closed"
        return await self._task_group.__aexit__(exc_type, exc, tb)

    # -- spawning --------------------------------------------------------------------------

    def spawn(
        self,
        fn: Subagent,
        *args: Any,
        task_id: str | None = None,
        name: str | None = None,
        kind: str = "subagent",
        description: str = "",
        timeout: float | None = None,
        parent: str | None = _AMBIENT,
        close_policy: ClosePolicy = "cancel",
        use_slot: bool = True,
        inbox: bool = True,
        session: Session | None = None,
    ) -> str:
        """Start ``fn(*args)`` in the background (or queue it) and return its task id at once.

        ``task_id`` defaults to a fresh id from ``id_factory``; an explicit id that is live
        raises :class:`~followups.TaskIdInUse`. ``name`` must be unique among the session's
        live tasks. ``parent`` defaults to the subagent the call is made from, if any.
        ``timeout`` (seconds) fails the task if it runs longer. ``use_slot=False`` runs it
        outside the concurrency cap (a background shell, say); ``inbox=False`` gives it no
        inbox (a send fails with :class:`~followups.NoInbox`). ``session`` (another session of
        the pool's store; default the pool's) is the conversation the task belongs to and
        reports to: one pool can serve every conversation of an app. Raises
        :class:`CapacityExceeded` at the cap (``reject``) or when the queue is full
        (``queue``), :class:`~followups.PoolClosed` outside the block or while it shuts down.
        Never suspends; any thread.
        """
        self._check_open()
        if not callable(fn):
            raise TypeError(f"fn must be an async callable, got {type(fn).__name__}")
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        if session is None:
            session = self.session
        elif not isinstance(session, Session) or session._core is not self.session._core:
            raise ValueError("session must be a session of the pool's own store (store.session(id))")
        if parent is _AMBIENT:
            ambient = current_task()
            parent = ambient.task_id if ambient is not None and ambient.session.id == session.id else None
        explicit = task_id is not None
        for _ in range(1000):
            candidate = task_id if explicit else self._id_factory()
            request = session._request(
                candidate,  # type: ignore[arg-type]
                description=description,
                kind=kind,
                name=name,
                parent=parent,
                close_policy=close_policy,
                **self._admission(explicit, use_slot=use_slot, inbox=inbox),
            )
            try:
                admission = session.create(request)
            except TaskIdInUse:
                if explicit:
                    raise
                continue
            except AdmissionRefused as refused:
                raise self._refusal(refused) from None
            break
        else:
            raise RuntimeError("id_factory returned 1000 ids that are already in use")
        context = TaskContext(session, admission.ref, name=request.name, description=description, kind=request.kind)
        run = _LocalRun(self, admission.ref, fn, args, timeout, context)
        with self._lock:
            self._runs[run.ref] = run
        session._core.local_runs.add(run.ref, run)
        if admission.status is TaskStatus.RUNNING or self._admitted_meanwhile(run.ref):
            self._on_loop(lambda: self._launch(run))
        return run.ref.task_id

    def _admission(self, explicit: bool, *, use_slot: bool, inbox: bool) -> dict[str, Any]:
        """The :class:`CreateRequest` fields that make a run of this pool: its cap and queue."""
        return {
            "if_exists": "refuse_live" if explicit else "refuse",
            "max_running": self.max_concurrent if use_slot else None,
            "max_running_total": self.session.settings.max_concurrent_total if use_slot else None,
            "when_full": self.when_full,
            "max_queued": self.max_queued,
            "has_inbox": inbox,
        }

    def _admitted_meanwhile(self, ref: RunRef) -> bool:
        """A queued run admitted between its creation and its registration here, whose start
        action found no one to hand it to."""
        task = self.session._core.backend.get_run(ref)
        return task is not None and task.state.status is TaskStatus.RUNNING and task.started_at is None

    def _check_open(self) -> None:
        state = self._state
        if state == "open":
            return
        if state == "closing" and self.close == "wait":
            ambient = current_task()
            if ambient is not None and ambient.ref in self._runs:
                return  # a subagent of this pool spawning a child while the pool waits for it
        if state == "new":
            raise PoolClosed("SubagentPool.spawn called before entering its 'async with' block")
        if state == "closing":
            raise PoolClosed("SubagentPool is shutting down: it accepts no new subagents")
        raise PoolClosed("SubagentPool.spawn called after its 'async with' block ended")

    # -- cancelling ------------------------------------------------------------------------

    def cancel(self, task_id: str, reason: str = CANCELLED_BY_REQUEST) -> bool:
        """Cancel one task of the session, queued or running. Returns False if it is not live.
        A queued one is reported cancelled at once; a running one once it has unwound (at its
        next checkpoint). Any thread."""
        return bool(self.session.cancel(task_id, reason))

    def cancel_all(self, reason: str = DEFAULT_CANCEL_REASON) -> list[str]:
        """:meth:`Session.cancel_all` of the pool's session: every live task is cancelled with
        ``reason`` and the pending queue cleared. Returns the ids cancelled. Any thread."""
        return self.session.cancel_all(reason)

    def _cancel_own(self, reason: str) -> None:
        with self._lock:
            runs = list(self._runs.values())
        by_session: dict[str, list[str]] = {}
        for run in runs:
            by_session.setdefault(run.ref.session, []).append(run.ref.task_id)
        for session_id, ids in by_session.items():
            self.session.session(session_id)._request_cancel(Selection(ids=tuple(ids)), reason, by="session_closed")
        for run in runs:  # also reaches a run whose record was taken over meanwhile
            if run.reason is None:
                run.reason = reason
            run._cancel_now()

    # -- counts and waiting ----------------------------------------------------------------

    def running_count(self) -> int:
        """Tasks of the session holding a slot and not finished."""
        return self.session.running_count()

    def queued_count(self) -> int:
        """Tasks of the session waiting for a slot."""
        return self.session.queued_count()

    def live_count(self) -> int:
        """Tasks of the session whose outcome is still to come: queued or running. It drops in
        the same step as the notification is queued, so a loop that finds nothing pending and
        ``live_count() > 0`` can wait for the next notification without missing one."""
        return self.session.live_count()

    async def wait_for_notification(self, timeout: float | None = None) -> bool:
        """:meth:`Session.wait_for_notification` of the pool's session."""
        return await self.session.wait_for_notification(timeout)

    async def wait_for_change(self, timeout: float | None = None) -> bool:
        """:meth:`Session.wait_for_change` of the pool's session."""
        return await self.session.wait_for_change(timeout)

    # -- internals -------------------------------------------------------------------------

    def _on_loop(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the pool's loop: now when called there, else soon, in a task."""
        loop = self._loop
        if loop is None or loop.in_loop_thread():
            callback()
        else:
            loop.call_soon_in_task(callback)

    def _launch(self, run: _LocalRun) -> None:
        if run.launched or run.ref not in self._runs or self._task_group is None:
            return
        run.launched = True
        run.scope = anyio.CancelScope()
        hand_off = _handing_off.get()
        if hand_off is not None and hand_off.pool is self and hand_off.run is None:
            hand_off.run = run  # admitted by the report of the run that task is finishing
            return
        self._task_group.start_soon(self._work, run, name=f"subagent {run.ref.task_id}")

    async def _work(self, run: _LocalRun | None) -> None:
        """Run ``run``, then each run its report admitted (a queued run taking the freed slot),
        in this task: a queue of subagents costs one task per slot, not one per subagent."""
        while run is not None:
            run = await self._run(run)
            if run is not None:
                # let the loop's other tasks run between subagents, without a cancellation
                # point: the next run meets a cancellation at its own checkpoints, as it would
                # in a task of its own
                await anyio.lowlevel.cancel_shielded_checkpoint()

    def _drop(self, run: _LocalRun) -> None:
        with self._lock:
            self._runs.pop(run.ref, None)
            drained = not self._runs
        self.session._core.local_runs.discard(run.ref)
        if drained:  # only the pool's exit waits for this, and only for the last run
            self._drained.bump()

    async def _run(self, run: _LocalRun) -> _LocalRun | None:
        """Execute and report ``run``; returns the queued run its report admitted, if any, for
        the caller to run next."""
        core = self.session._core
        try:
            started = await core.call_async(core.backend.start, run.ref, now=core.clock())
            if not started:
                return None
            try:
                state = await self._execute(run)
            except anyio.get_cancelled_exc_class():
                await core.report_async(run.ref, run.cancelled_state)
                raise
            except BaseException as exc:
                await core.report_async(run.ref, TaskState.failed(describe_exception(exc)))
                raise
            hand_off = _HandOff(self)
            token = _handing_off.set(hand_off)
            try:
                await core.report_async(run.ref, state)
            except BaseException:
                if hand_off.run is not None:  # it still runs, in a task of its own
                    self._task_group.start_soon(self._work, hand_off.run)  # type: ignore[union-attr]
                raise
            finally:
                _handing_off.reset(token)
            return hand_off.run
        finally:
            self._drop(run)

    async def _execute(self, run: _LocalRun) -> TaskState:
        """Run the subagent and map what happens to a final state. A cancellation of its own
        scope becomes a cancelled state; one from outside the pool's scopes is the subagent's
        failure; an enclosing cancellation propagates."""
        kwargs = {"ctx": run.context} if run.pass_ctx else {}
        assert run.scope is not None
        with run.scope, running_as(run.context):
            try:
                if run.timeout is None:  # no deadline: no cancel scope of its own to pay for
                    return _final_state(await run.fn(*run.args, **kwargs))
                with anyio.move_on_after(run.timeout) as deadline:
                    return _final_state(await run.fn(*run.args, **kwargs))
            except anyio.get_cancelled_exc_class() as exc:
                if _cancellation_is_pending():
                    raise
                return TaskState.failed(describe_exception(exc))
            except Exception as exc:
                return TaskState.failed(describe_exception(exc))
            if deadline.cancelled_caught:
                return TaskState.failed(f"timed out after {run.timeout:g} s")
        return run.cancelled_state

    def _refusal(self, refused: AdmissionRefused) -> CapacityExceeded:
        in_flight = refused.running + refused.queued
        if refused.reason == "total_cap":
            message = (
                f"Cannot start another background task: {refused.running} subagents are running across "
                f"all conversations, the most this service allows at once. Do not retry in a loop: wait "
                f"for a completion notice in a <system-reminder>, or do this piece of work inline yourself."
            )
        elif refused.reason == "cap":
            message = (
                f"Cannot start another background task: {refused.running} of {self.max_concurrent} "
                f"subagent slots are in use. Do not retry in a loop: each running task reports its "
                f"result on its own in a <system-reminder> when it finishes. Wait for that notice "
                f"before starting another task, or do this piece of work inline yourself."
            )
        else:
            message = (
                f"Cannot queue another background task: all {self.max_concurrent} subagent slots are "
                f"in use and the queue is full ({refused.queued} of {self.max_queued} waiting). Do not "
                f"retry in a loop: wait for a completion notice in a <system-reminder>, or do this "
                f"piece of work inline yourself."
            )
        return CapacityExceeded(message, limit=self.max_concurrent, in_flight=in_flight)


class _HandOff:
    """Set while a run's task reports it: a run that report admits is handed to that task,
    which runs it next, instead of getting a task of its own. Only a launch made inside the
    report (on the same task, in the same context) can see it."""

    __slots__ = ("pool", "run")

    def __init__(self, pool: SubagentPool) -> None:
        self.pool = pool
        self.run: _LocalRun | None = None


_handing_off: contextvars.ContextVar[_HandOff | None] = contextvars.ContextVar("followups_pool_hand_off", default=None)


def _final_state(value: Any) -> TaskState:
    """A subagent's return value as its final state: a final state as it is, else completed
    with the value rendered as text."""
    if isinstance(value, TaskState) and value.is_finished:
        return value
    return TaskState.completed(render_result(value))


def _cancellation_is_pending() -> bool:
    """True when the current task is being cancelled by a cancel scope (ours or an enclosing
    one), as opposed to a cancellation error that merely passed through it."""
    if sniffio.current_async_library() == "asyncio":
        import asyncio

        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return anyio.current_effective_deadline() == float("-inf")


def _accepts_ctx(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a ``ctx`` keyword argument. A plain function is read from its code
    object (a signature costs more than a trivial subagent's whole run); anything else, and a
    function that carries its signature elsewhere (``functools.wraps``), from its signature."""
    if type(fn) is types.FunctionType and not hasattr(fn, "__wrapped__") and not hasattr(fn, "__signature__"):
        code = fn.__code__
        return "ctx" in code.co_varnames[code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount]
    try:
        parameter = inspect.signature(fn).parameters.get("ctx")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _random_id() -> str:
    return secrets.token_hex(4)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for an exception, or the type alone when it has no message or its
    ``__str__`` fails: the error text of a failed subagent."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        return f"{name} (its message could not be read)"
    return f"{name}: {message}" if message else name


def render_result(value: Any) -> str:
    """A subagent's return value as text for the model: strings as they are, pydantic models,
    dicts and lists as indented JSON, bytes decoded as UTF-8, None as an empty string, and
    anything else with ``str()``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return value.model_dump_json(indent=2)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return str(value)
