"""Model-facing tools: the ``Tool`` value, and ``task`` / ``task_status`` / ``list_tasks`` /
``cancel_task`` / ``send_message`` over a :class:`SubagentPool`. Their texts are written for a
model: what happened, and what to do next."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .errors import CapacityExceeded, InboxError, NameInUse, StoreUnavailable, UnknownTask
from .pool import SubagentPool
from .session import Session
from .state import BackgroundTask, TaskStatus

__all__ = [
    "CancelTaskArgs",
    "ListTasksArgs",
    "SendMessageArgs",
    "TaskArgs",
    "TaskRequest",
    "TaskStatusArgs",
    "Tool",
    "ToolOutcome",
    "task_tools",
]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool returns to the model: text, and whether it reports an error."""

    content: str
    is_error: bool = False


ToolHandler = Callable[[Any], str | ToolOutcome | Awaitable[str | ToolOutcome]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model can call: a name, a description, pydantic parameters and a handler.

    A synchronous handler runs inline, in the order the model called it; an async one runs
    concurrently with the other async calls of the same turn.
    """

    name: str
    description: str
    parameters: type[BaseModel]
    handler: ToolHandler

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def spec(self) -> dict[str, Any]:
        """The tool as a model API describes it: name, description and JSON schema."""
        return {"name": self.name, "description": self.description, "input_schema": _schema(self.parameters)}

    async def invoke(self, arguments: Mapping[str, Any]) -> ToolOutcome:
        """Validate ``arguments`` and run the handler, awaiting it if it is async.

        Never raises an ``Exception``: invalid arguments and an exception from the handler
        become error outcomes that tell the model what went wrong. Cancellation (and any other
        ``BaseException``) propagates. A synchronous handler runs inline, without a checkpoint.
        """
        parsed = self.parse(arguments)
        if isinstance(parsed, ToolOutcome):
            return parsed
        try:
            result = self.handler(parsed)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return self._failure(exc)
        return _as_outcome(result)

    def invoke_sync(self, arguments: Mapping[str, Any]) -> ToolOutcome:
        """:meth:`invoke` for a synchronous handler, from code that cannot await (any thread:
        the task tools reach the pool through its thread-safe methods). Raises ``TypeError``
        for an async handler."""
        if self.is_async:
            raise TypeError(f"tool {self.name!r} has an async handler; await Tool.invoke instead")
        parsed = self.parse(arguments)
        if isinstance(parsed, ToolOutcome):
            return parsed
        try:
            result = self.handler(parsed)
        except Exception as exc:
            return self._failure(exc)
        return _as_outcome(result)

    def _failure(self, exc: Exception) -> ToolOutcome:
        return ToolOutcome(f"Tool {self.name} failed: {type(exc).__name__}: {exc}", is_error=True)

    def parse(self, arguments: Mapping[str, Any]) -> BaseModel | ToolOutcome:
        """Validated arguments, or an error outcome that tells the model what was wrong."""
        try:
            return self.parameters.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.errors()
            )
            return ToolOutcome(f"Invalid arguments for {self.name}: {problems}", is_error=True)


@functools.lru_cache(maxsize=256)
def _schema(parameters: type[BaseModel]) -> dict[str, Any]:
    """A parameter model's JSON schema, built once: every model call of a turn sends it."""
    return parameters.model_json_schema()


def _as_outcome(result: object) -> ToolOutcome:
    return result if isinstance(result, ToolOutcome) else ToolOutcome(str(result))


class TaskArgs(BaseModel):
    description: str = Field(min_length=1, max_length=200, description="A few words naming the task.")
    prompt: str = Field(min_length=1, description="Complete instructions for the subagent.")
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Optional short name to refer to the task by, unique among running tasks.",
    )


class TaskStatusArgs(BaseModel):
    task_id: str = Field(min_length=1, description="The id (or name) of the task.")


class ListTasksArgs(BaseModel):
    status: TaskStatus | None = Field(default=None, description="Only tasks with this status.")


class CancelTaskArgs(BaseModel):
    task_id: str = Field(min_length=1, description="The id (or name) of the task.")
    tree: bool = Field(default=False, description="Also cancel every task it started, and theirs.")


class SendMessageArgs(BaseModel):
    task_id: str = Field(min_length=1, description="The id (or name) of a running background task.")
    message: str = Field(min_length=1, description="What to tell it, or your answer to its question.")


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a subagent is asked to do: the ``task`` tool's arguments. ``run_subagent`` receives
    one; a subagent that also accepts ``ctx`` gets its :class:`~followups.TaskContext`."""

    description: str
    prompt: str
    name: str | None = None


def task_tools(
    pool: SubagentPool, run_subagent: Callable[..., Awaitable[Any]], *, session: Session | None = None
) -> list[Tool]:
    """The ``task``, ``task_status``, ``list_tasks``, ``cancel_task`` and ``send_message`` tools
    over ``pool`` and ``session`` (a session of the pool's store; default the pool's own): the
    tasks they start belong to that session, and they see only its tasks.

    ``run_subagent(request)`` (an async callable taking a :class:`TaskRequest`, and ``ctx`` if
    it accepts one) is the subagent itself: its return value becomes the task's result, an
    exception its error. All handlers are synchronous (they never suspend), so parallel calls
    are admitted in the model's order and the pool's cap holds. Tasks are named by id or name.
    """
    if session is None:
        session = pool.session
    capacity = session.settings.capacity

    pass_ctx = _accepts_ctx(run_subagent)

    def spawn(request: TaskRequest) -> str:
        if pass_ctx:
            async def subagent(ctx: Any) -> Any:
                return await run_subagent(request, ctx=ctx)

            return pool.spawn(subagent, name=request.name, description=request.description, session=session)
        return pool.spawn(run_subagent, request, name=request.name, description=request.description, session=session)

    def task(args: TaskArgs) -> ToolOutcome:
        request = TaskRequest(args.description, args.prompt, args.name)
        try:
            task_id = spawn(request)
        except (CapacityExceeded, NameInUse, StoreUnavailable) as exc:
            return ToolOutcome(str(exc), is_error=True)
        named = f", named {args.name!r}" if args.name else ""
        return ToolOutcome(
            f"Started background task {task_id} ({args.description}){named}. It runs on its own: its result "
            f"will arrive automatically in a <system-reminder> message when it finishes. Do not poll "
            f"task_status or wait for it; continue with other work, or end your turn if there is none."
        )

    def task_status(args: TaskStatusArgs) -> ToolOutcome:
        found = session.get(args.task_id)
        if found is None:
            return ToolOutcome(_unknown(args.task_id, capacity), is_error=True)
        return ToolOutcome(_status_text(found, session.children(found.id), session.settings.stall_after_seconds))

    def list_tasks(args: ListTasksArgs) -> ToolOutcome:
        tasks = session.list(status=args.status)
        if not tasks:
            which = f"{args.status.value} " if args.status else ""
            return ToolOutcome(f"There are no {which}background tasks.")
        return ToolOutcome("\n".join(_list_line(task) for task in tasks))

    def cancel_task(args: CancelTaskArgs) -> ToolOutcome:
        found = session.get(args.task_id)
        if found is None:
            return ToolOutcome(_unknown(args.task_id, capacity), is_error=True)
        outcome = session.cancel(found.id, tree=args.tree)
        if not outcome:
            return ToolOutcome(f"{outcome.message}; there is nothing to cancel.")
        others = [task_id for task_id in outcome.requested if task_id != found.id]
        also = f" Also cancelling {len(others)} task(s) it started: {', '.join(others)}." if others else ""
        if found.id not in outcome.requested:
            return ToolOutcome(
                f"Task {found.id} is not running (current status: {found.state.status.value}).{also}"
            )
        if found.queued:
            return ToolOutcome(f"Task {found.id} was cancelled before it started.{also}")
        return ToolOutcome(
            f"Task {found.id} is being cancelled; a <system-reminder> will confirm it once it has stopped.{also}"
        )

    def send_message(args: SendMessageArgs) -> ToolOutcome:
        try:
            session.send(args.task_id, args.message)
        except UnknownTask:
            return ToolOutcome(_unknown(args.task_id, capacity), is_error=True)
        except (InboxError, StoreUnavailable) as exc:
            return ToolOutcome(f"{exc}.", is_error=True)
        return ToolOutcome(f"Message delivered to task {args.task_id}; it reads it while it runs.")

    return [
        Tool(
            "task",
            "Start a subagent in the background on a self-contained task. Returns its task id at "
            "once; the result arrives later, by itself, in a <system-reminder>.",
            TaskArgs,
            task,
        ),
        Tool(
            "task_status",
            "Look up a background task by id or name: queued, running (with its latest progress), "
            "or its (possibly relayed) result, with its times and the tasks it started.",
            TaskStatusArgs,
            task_status,
        ),
        Tool("list_tasks", "List the background tasks of this conversation, oldest first.", ListTasksArgs, list_tasks),
        Tool(
            "cancel_task",
            "Cancel a queued or running background task by id or name; with tree=true, also the tasks it started.",
            CancelTaskArgs,
            cancel_task,
        ),
        Tool(
            "send_message",
            "Send a message to a running background task, for instance to steer it or to answer its question.",
            SendMessageArgs,
            send_message,
        ),
    ]


def _accepts_ctx(fn: Callable[..., Any]) -> bool:
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _label(task: BackgroundTask) -> str:
    named = f" '{task.name}'" if task.name else ""
    described = f" ({task.description})" if task.description else ""
    return f"Task {task.id}{named}{described}"


def _status_text(task: BackgroundTask, children: list[BackgroundTask], stall_after: float) -> str:
    label = _label(task)
    now = time.time()
    lines: list[str]
    if task.queued:
        lines = [f"{label} is queued, waiting for a free subagent slot."]
    elif not task.state.is_finished:
        since = f" (for {_seconds(now - task.started_at)})" if task.started_at is not None else ""
        lines = [f"{label} is still running{since}."]
        if task.progress is not None and task.progress_at is not None:
            lines.append(f"Last progress, {_seconds(now - task.progress_at)} ago: {task.progress}")
        if task.stalled:
            lines.append(f"It has reported nothing for over {_seconds(stall_after)}: it may be stalled.")
        lines.append("Its result will arrive automatically in a <system-reminder>; there is no need to check again.")
    else:
        took = f" after {_seconds(task.duration)}" if task.duration is not None else ""
        lines = [f"{label} {task.state.status.value}{took}:", task.state.text]
    if children:
        listed = ", ".join(f"{child.id} ({child.state.status.value})" for child in children)
        lines.append(f"Tasks it started: {listed}.")
    if task.persistence_error:
        lines.append(f"Its result is not saved to the task store yet ({task.persistence_error}).")
    return "\n".join(lines)


def _list_line(task: BackgroundTask) -> str:
    named = f" '{task.name}'" if task.name else ""
    described = f" ({task.description})" if task.description else ""
    line = f"- {task.id}{named} [{task.kind}] {task.state.status.value}{described}"
    if not task.state.is_finished and task.progress:
        line += f": {task.progress}"
    if task.stalled:
        line += " (no progress lately: may be stalled)"
    if task.persistence_error:
        line += " (not saved to the task store yet; retrying)"
    return line


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds} s"


def _unknown(task_id: str, capacity: int) -> str:
    return (
        f"No task {task_id!r} is known: it never existed, or it finished long enough ago to be evicted "
        f"(only the {capacity} most recent tasks are kept). Finished results are delivered "
        f"automatically in <system-reminder> messages."
    )
