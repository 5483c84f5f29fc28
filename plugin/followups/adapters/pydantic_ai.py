"""followups for pydantic-ai 2.x agents: background results as ``<system-reminder>`` user turns.

Extension points of pydantic-ai used here:

- a capability (:class:`pydantic_ai.capabilities.AbstractCapability` subclass, one fresh instance per
  run through ``for_run``) with four hooks:

  - ``before_model_request`` takes the pending reminder (:func:`followups.take_followup`) and adds it
    to the request about to be sent, and to the run's message history, as a
    :class:`~pydantic_ai.messages.ModelRequest` holding one
    :class:`~pydantic_ai.messages.UserPromptPart`;
  - ``wrap_model_request`` settles that :class:`~followups.ReminderDelivery`: confirmed once the
    model request succeeded, given back (and the message taken out of the history again) when it
    failed or was cancelled;
  - ``after_node_run`` sees the run about to end (an :class:`pydantic_graph.End` result) while
    subagents are still running or results are pending: it waits for the next result and hands the
    reminder to :meth:`RunContext.enqueue <pydantic_ai.tools.RunContext.enqueue>` with
    ``priority='when_idle'``, so pydantic-ai continues the run with it instead of ending;
  - ``wrap_run`` gives back whatever never reached a successful model request when the run ends;

- tools: :class:`pydantic_ai.Tool` built with ``Tool.from_schema`` from the ``followups.task_tools``
  tools (their names, descriptions, JSON schemas, validation and handlers), gathered in a
  :class:`pydantic_ai.FunctionToolset`. Their functions are async, so pydantic-ai runs them on the
  event loop thread, where :meth:`SubagentPool.spawn` must be called.

pydantic-ai 2.x runs on asyncio only: enter the :class:`~followups.SubagentPool` inside the coroutine
that runs the agent (``asyncio.run(main())``), so pool and agent share one event loop.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic_ai import DeferredToolRequests, FunctionToolset, ModelRequest, ModelRetry, RunContext, ToolFailed
from pydantic_ai import Tool as PydanticAITool
from pydantic_ai.capabilities import (
    AbstractCapability,
    AgentNode,
    NodeResult,
    WrapModelRequestHandler,
    WrapRunHandler,
)
from pydantic_ai.messages import ModelMessage, ModelResponse, UserPromptPart
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.run import AgentRunResult
from pydantic_graph import End

from ..delivery import ReminderDelivery, take_followup
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..store import BackgroundStore
from ..tools import TaskRequest, Tool, ToolOutcome, task_tools

__all__ = ["FollowupReminders", "as_pydantic_ai_tool", "task_toolset"]


@dataclasses.dataclass(frozen=True, slots=True)
class _InjectedReminder:
    """A reminder put into the run's history whose model request has not succeeded yet."""

    delivery: ReminderDelivery
    message: ModelRequest
    # The history list it went into. A context built earlier in the run (the one ``wrap_run`` gets) can
    # hold a list the run has since replaced, so the reminder is taken out of this one.
    history: list[ModelMessage]

    def give_back(self) -> None:
        """Take the message out of the history (by identity: another request may equal it) and put the
        notifications back in the store."""
        for index, candidate in enumerate(self.history):
            if candidate is self.message:
                del self.history[index]
                break
        self.delivery.give_back()


@dataclasses.dataclass
class FollowupReminders(AbstractCapability[Any]):
    """Delivers the results of background subagents to a pydantic-ai agent, each exactly once.

    Before each model request, the pending notifications of ``store`` are rendered into one
    ``<system-reminder>`` (within ``settings.reminder_budget_chars``; the rest waits for the next
    request) and sent as a user-role :class:`~pydantic_ai.messages.UserPromptPart` in a
    :class:`~pydantic_ai.messages.ModelRequest` of its own, after the request's other messages. It
    stays in the run's message history (``result.all_messages()``), so later requests see it there,
    once, and it is never injected again. It never goes into the instructions or a system prompt.

    Failure: if the model request fails or is cancelled (the model raised, a hook raised, the run was
    cancelled, ``SkipModelRequest``), the reminder's message is taken out of the history again and its
    notifications go back to the front of the store's queue, so the next request, in this run or a
    later one, delivers them. After a ``ModelRetry`` the reminder stays in the history and rides along
    with the retried request; it is settled by that request's outcome. At most one reminder is in
    flight per run: while one waits for a successful request, no other is taken.

    ``resume_when_idle`` (default True): when the model ends the run while subagents of ``store``
    are still live, or results are pending, the run waits (at most ``idle_timeout`` seconds; None
    waits as long as it takes) for the next result and continues with its reminder, enqueued through
    ``RunContext.enqueue(..., priority='when_idle')``, instead of ending. A run that ends on
    a timeout leaves the results pending for the next run. Not applied when the run pauses for deferred
    tool calls, nor to the final streamed response of ``run_stream`` (pydantic-ai runs no
    ``after_node_run`` there).

    ``renderer`` defaults to the one the store's relay compiled for its settings.

    One instance may serve any number of runs, at once too: every run works on its own copy
    (``for_run``). The hooks run on the run's event loop thread; the store may be fed from any thread.
    """

    store: BackgroundStore
    _: dataclasses.KW_ONLY
    renderer: ReminderRenderer | None = None
    resume_when_idle: bool = True
    idle_timeout: float | None = None
    _in_flight: list[_InjectedReminder] = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.store, BackgroundStore):
            raise TypeError(f"store must be a followups.BackgroundStore, got {type(self.store).__name__}")
        if self.renderer is not None and not isinstance(self.renderer, ReminderRenderer):
            raise TypeError(
                f"renderer must be a followups.ReminderRenderer or None, got {type(self.renderer).__name__}"
            )
        if self.idle_timeout is not None and (
            isinstance(self.idle_timeout, bool)
            or not isinstance(self.idle_timeout, int | float)
            or not self.idle_timeout > 0
        ):
            raise ValueError(f"idle_timeout must be a positive number of seconds or None, got {self.idle_timeout!r}")

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live store: not constructible from an agent spec

    async def for_run(self, ctx: RunContext[Any]) -> FollowupReminders:
        return dataclasses.replace(self)

    async def wrap_run(self, ctx: RunContext[Any], *, handler: WrapRunHandler) -> AgentRunResult[Any]:
        try:
            return await handler()
        finally:
            # Whatever is still in flight never had a successful model request: the run failed, was
            # cancelled, or stopped (a usage limit) between enqueueing a reminder and sending it.
            self._give_back_all()

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        if self._in_flight:
            return request_context  # this request already carries the reminder it is waiting on
        delivery = take_followup(self.store, self.renderer)
        if delivery is None:
            return request_context
        message = ModelRequest(parts=[UserPromptPart(content=delivery.text)])
        self._in_flight.append(_InjectedReminder(delivery, message, ctx.messages))
        request_context.messages = [*request_context.messages, message]
        ctx.messages.append(message)
        return request_context

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        try:
            response = await handler(request_context)
        except ModelRetry:
            raise  # pydantic-ai retries with the history as it is, the reminder included
        except BaseException:
            self._give_back_all()
            raise
        for injected in self._in_flight:
            injected.delivery.confirm()
        self._in_flight.clear()
        return response

    async def after_node_run(
        self,
        ctx: RunContext[Any],
        *,
        node: AgentNode[Any],
        result: NodeResult[Any],
    ) -> NodeResult[Any]:
        if not self.resume_when_idle or not isinstance(result, End):
            return result
        if isinstance(result.data.output, DeferredToolRequests):
            return result  # the run hands control back to its caller, who resumes it
        delivery = await self._next_result()
        if delivery is None:
            return result
        message = ModelRequest(parts=[UserPromptPart(content=delivery.text)])
        try:
            ctx.enqueue(message, priority="when_idle")
        except BaseException:
            delivery.give_back()
            raise
        self._in_flight.append(_InjectedReminder(delivery, message, ctx.messages))
        return result

    async def _next_result(self) -> ReminderDelivery | None:
        """The next reminder, waiting for it while subagents are live; None if none is pending once no
        subagent is live, or ``idle_timeout`` passed. Cancelling the wait loses nothing: it never drains."""
        with anyio.move_on_after(self.idle_timeout):
            while True:
                delivery = take_followup(self.store, self.renderer)
                if delivery is not None or self.store.live_count() == 0:
                    return delivery
                await self.store.wait_for_notification()
        return None

    def _give_back_all(self) -> None:
        """Take every in-flight reminder out of the history and put its notifications back in the store."""
        injected, self._in_flight = self._in_flight, []
        for reminder in injected:
            reminder.give_back()


def as_pydantic_ai_tool(tool: Tool) -> PydanticAITool[Any]:
    """``tool`` as a pydantic-ai tool: same name, description and JSON schema.

    Arguments are validated by ``tool.parse``; invalid ones raise :class:`~pydantic_ai.ModelRetry`
    with the validation problems, so the model corrects its call (within the tool's retry budget).
    An outcome with ``is_error`` raises :class:`~pydantic_ai.ToolFailed`: the model sees the failure
    (a refusal at the subagent cap, an unknown task id) without being told to retry. The function is
    async, so pydantic-ai runs it on the event loop thread.
    """

    async def call_tool(**arguments: Any) -> str:
        parsed = tool.parse(arguments)
        if isinstance(parsed, ToolOutcome):
            raise ModelRetry(parsed.content)
        returned = tool.handler(parsed)
        outcome = await returned if inspect.isawaitable(returned) else returned
        if isinstance(outcome, str):
            return outcome
        if outcome.is_error:
            raise ToolFailed(outcome.content)
        return outcome.content

    return PydanticAITool.from_schema(
        call_tool, tool.name, tool.description, tool.parameters.model_json_schema()
    )


def task_toolset(
    pool: SubagentPool, run_subagent: Callable[[TaskRequest], Awaitable[Any]]
) -> FunctionToolset[Any]:
    """The ``task``, ``task_status`` and ``cancel_task`` tools (:func:`followups.task_tools`) over
    ``pool``, as a pydantic-ai toolset: pass it in ``Agent(toolsets=[...])``.

    ``run_subagent(request)`` is the subagent: its return value becomes the task's result, an
    exception its error. The tools must be called while ``pool`` is entered, on its event loop (the
    loop running the agent).
    """
    return FunctionToolset([as_pydantic_ai_tool(tool) for tool in task_tools(pool, run_subagent)])
