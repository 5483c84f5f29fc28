"""Model-facing tools: the ``Tool`` value, and ``task`` / ``task_status`` / ``cancel_task``
over a :class:`SubagentPool`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .errors import CapacityExceeded
from .pool import SubagentPool
from .state import TaskStatus

__all__ = [
    "CancelTaskArgs",
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
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.parameters.model_json_schema(),
        }

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


def _as_outcome(result: object) -> ToolOutcome:
    return result if isinstance(result, ToolOutcome) else ToolOutcome(str(result))


class TaskArgs(BaseModel):
    description: str = Field(min_length=1, max_length=200, description="A few words naming the task.")
    prompt: str = Field(min_length=1, description="Complete instructions for the subagent.")


class TaskStatusArgs(BaseModel):
    task_id: str = Field(min_length=1, description="The id the task tool returned.")


class CancelTaskArgs(BaseModel):
    task_id: str = Field(min_length=1, description="The id the task tool returned.")


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a subagent is asked to do: the ``task`` tool's arguments."""

    description: str
    prompt: str


def task_tools(pool: SubagentPool, run_subagent: Callable[[TaskRequest], Awaitable[Any]]) -> list[Tool]:
    """The ``task``, ``task_status`` and ``cancel_task`` tools over ``pool``.

    ``run_subagent(request)`` is the subagent itself: its return value becomes the task's
    result, an exception its error. All three handlers are synchronous (they never suspend),
    so parallel calls are admitted in the model's order and the pool's cap holds.
    """
    store = pool.store

    def task(args: TaskArgs) -> ToolOutcome:
        request = TaskRequest(args.description, args.prompt)
        try:
            task_id = pool.spawn(run_subagent, request, description=args.description)
        except CapacityExceeded as exc:
            return ToolOutcome(str(exc), is_error=True)
        return ToolOutcome(
            f"Started background task {task_id} ({args.description}). It runs on its own: its result "
            f"will arrive automatically in a <system-reminder> message when it finishes. Do not poll "
            f"task_status or wait for it; continue with other work, or end your turn if there is none."
        )

    def task_status(args: TaskStatusArgs) -> ToolOutcome:
        task = store.get(args.task_id)
        if task is None:
            return ToolOutcome(_unknown(args.task_id, store.settings.capacity), is_error=True)
        label = f"Task {task.id}" + (f" ({task.description})" if task.description else "")
        if task.queued:
            return ToolOutcome(f"{label} is queued, waiting for a free subagent slot.")
        if task.state.status is TaskStatus.RUNNING:
            return ToolOutcome(
                f"{label} is still running. Its result will arrive automatically in a "
                f"<system-reminder>; there is no need to check again."
            )
        return ToolOutcome(f"{label} {task.state.status.value}:\n{task.state.text}")

    def cancel_task(args: CancelTaskArgs) -> ToolOutcome:
        task = store.get(args.task_id)
        if task is None:
            return ToolOutcome(_unknown(args.task_id, store.settings.capacity), is_error=True)
        if task.state.is_finished:
            return ToolOutcome(f"Task {task.id} already {task.state.status.value}; there is nothing to cancel.")
        if not pool.cancel(task.id):
            return ToolOutcome(f"Task {task.id} is not managed by this session's pool.", is_error=True)
        if task.queued:
            return ToolOutcome(f"Task {task.id} was cancelled before it started.")
        return ToolOutcome(
            f"Task {task.id} is being cancelled; a <system-reminder> will confirm it once it has stopped."
        )

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
            "Look up a background task: queued, running, or its (possibly relayed) result.",
            TaskStatusArgs,
            task_status,
        ),
        Tool("cancel_task", "Cancel a queued or running background task.", CancelTaskArgs, cancel_task),
    ]


def _unknown(task_id: str, capacity: int) -> str:
    return (
        f"No task {task_id!r} is known: it never existed, or it finished long enough ago to be evicted "
        f"(only the {capacity} most recent tasks are kept). Finished results are delivered "
        f"automatically in <system-reminder> messages."
    )
