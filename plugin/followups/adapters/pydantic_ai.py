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
  event loop thread; :meth:`SubagentPool.spawn` may be called there or from any other thread.

pydantic-ai 2.x runs on asyncio only: enter the :class:`~followups.SubagentPool` inside the coroutine
that runs the agent (``asyncio.run(main())``), so pool and agent share one event loop; for
``agent.run_sync``, run the pool in a :class:`~followups.BlockingPool` and build the toolset over its
``pool``: a spawn from the agent's loop hands the subagent to the pool's own loop.
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
from pydantic_ai.messages import ModelMessage, ModelResponse, TextContent, UserPromptPart
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.run import AgentRunResult
from pydantic_graph import End

from ..delivery import (
    METADATA_KEY,
    ReminderDelivery,
    delivery_metadata,
    parse_delivery_metadata,
    settle_from_history,
    take_followup,
)
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..session import Session
from ..tools import TaskRequest, Tool, ToolOutcome, task_tools
from ._idle import check_idle_options

# The node ``run_stream`` ends a streamed run with once its final response has streamed; no
# request follows it, so a reminder taken there could never reach the model. Not exported by
# pydantic-ai, hence matched by name.
_STREAMED_RUN_END = "SetFinalResult"

__all__ = ["FollowupReminders", "as_pydantic_ai_tool", "is_reminder_part", "prompt_text", "task_toolset"]


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

    ``resume_when_idle`` (default True): when the model ends the run while subagents of the session
    are still live, or results are pending, the run waits (at most ``idle_timeout`` seconds; None
    waits as long as subagents are live) for the next result and continues with its reminder,
    enqueued through ``RunContext.enqueue(..., priority='when_idle')``, instead of ending; at most
    ``max_idle_resumes`` times per run. A run that ends on a timeout or the bound leaves the results
    pending for the next run. Not applied when the run pauses for deferred tool calls, nor at the end
    of ``run_stream``: a streamed run ends once its final answer has streamed and sends no further
    request, so the result stays pending for the next run rather than being taken and lost.

    Streaming: a reminder sent with a streamed request is confirmed only once that request's stream
    has been consumed; one that no request carried when the run ends is given back.

    Sessions: ``session`` names the :class:`~followups.Session` of ``store`` to deliver from (pass
    your conversation id; pydantic-ai has no conversation identity the capability could take by
    itself); None uses ``store`` itself, the default session. Each reminder's
    :class:`~pydantic_ai.messages.UserPromptPart` carries ``metadata["followups"]`` with the lease id
    and notification ids (see :func:`followups.delivery.delivery_metadata`) on its one
    :class:`~pydantic_ai.messages.TextContent` (:func:`prompt_text` reads the text back); the first request of a
    run settles from the history it was given: a reminder found there is confirmed (an earlier
    process may have died holding its lease), so a reloaded history never gets it twice.

    ``renderer`` defaults to the one the store's relay compiled for its settings.

    One instance may serve any number of runs, at once too: every run works on its own copy
    (``for_run``). The hooks run on the run's event loop thread; the store may be fed from any thread.
    """

    store: Session
    _: dataclasses.KW_ONLY
    session: str | None = None
    renderer: ReminderRenderer | None = None
    resume_when_idle: bool = True
    idle_timeout: float | None = None
    max_idle_resumes: int = 16
    _in_flight: list[_InjectedReminder] = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)
    _resumes: int = dataclasses.field(default=0, init=False, repr=False, compare=False)
    _settled_history: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)
    # What the request being made carries: set by before_model_request, which runs inside
    # wrap_model_request's handler.
    _sent: list[_InjectedReminder] = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.store, Session):
            raise TypeError(f"store must be a followups.BackgroundStore or Session, got {type(self.store).__name__}")
        if self.session is not None:
            self.store.session(self.session)  # validates the id now, not at the first request
        check_idle_options(self.idle_timeout, self.max_idle_resumes)
        if self.renderer is not None and not isinstance(self.renderer, ReminderRenderer):
            raise TypeError(
                f"renderer must be a followups.ReminderRenderer or None, got {type(self.renderer).__name__}"
            )

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live store: not constructible from an agent spec

    @property
    def conversation(self) -> Session:
        """The session reminders come from: ``store.session(session)``, or ``store``."""
        return self.store if self.session is None else self.store.session(self.session)

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
        session = self.conversation
        if not self._settled_history:
            self._settled_history = True
            carried = _carried(ctx.messages)
            if carried:
                settle_from_history(session, carried)
        if self._in_flight:
            self._sent = list(self._in_flight)
            return request_context  # this request already carries the reminder it is waiting on
        delivery = take_followup(session, self.renderer)
        if delivery is None:
            self._sent = []
            return request_context
        message = _reminder_request(delivery)
        self._in_flight.append(_InjectedReminder(delivery, message, ctx.messages))
        self._sent = list(self._in_flight)
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
        self._sent = []
        try:
            response = await handler(request_context)
        except ModelRetry:
            raise  # pydantic-ai retries with the history as it is, the reminder included
        except BaseException:
            self._give_back_all()
            raise
        # Only what this request carried: a streamed request returns after the run's last node
        # ran, and a reminder taken there is in no request.
        carried, self._sent = self._sent, []
        for injected in carried:
            injected.delivery.confirm()
            if injected in self._in_flight:
                self._in_flight.remove(injected)
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
        if type(node).__name__ == _STREAMED_RUN_END or self._resumes >= self.max_idle_resumes:
            return result
        delivery = await self._next_result()
        if delivery is None:
            return result
        self._resumes += 1
        message = _reminder_request(delivery)
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
        session = self.conversation
        with anyio.move_on_after(self.idle_timeout):
            while True:
                delivery = take_followup(session, self.renderer)
                if delivery is not None or session.live_count() == 0:
                    return delivery
                await session.wait_for_notification()
        return None

    def _give_back_all(self) -> None:
        """Take every in-flight reminder out of the history and put its notifications back in the store."""
        injected, self._in_flight = self._in_flight, []
        for reminder in injected:
            reminder.give_back()


def _reminder_request(delivery: ReminderDelivery) -> ModelRequest:
    """The request carrying ``delivery``: one user prompt part, the lease in the metadata."""
    # On the text content, not the request: pydantic-ai merges adjacent requests and keeps no
    # application metadata of the merged ones, while a content's metadata stays with it.
    content = TextContent(delivery.text, metadata={METADATA_KEY: delivery_metadata(delivery)})
    return ModelRequest(parts=[UserPromptPart(content=[content])])


def prompt_text(part: UserPromptPart) -> str:
    """The text of a user prompt part: its string content, or its text contents joined (a
    reminder's content is one :class:`~pydantic_ai.messages.TextContent` carrying its lease)."""
    if isinstance(part.content, str):
        return part.content
    return "".join(
        item.content if isinstance(item, TextContent) else item for item in part.content if isinstance(item, TextContent | str)
    )


def is_reminder_part(part: object) -> bool:
    """True for the user prompt part of a reminder :class:`FollowupReminders` added."""
    return isinstance(part, UserPromptPart) and _part_lease(part) is not None


def _part_lease(part: UserPromptPart) -> tuple[str, tuple[str, ...]] | None:
    if isinstance(part.content, str):
        return None
    for item in part.content:
        if isinstance(item, TextContent) and isinstance(item.metadata, dict):
            parsed = parse_delivery_metadata(item.metadata.get(METADATA_KEY))
            if parsed is not None:
                return parsed
    return None


def _carried(messages: list[ModelMessage]) -> list[tuple[str, tuple[str, ...]]]:
    """The leases of the reminders in ``messages`` (found by their metadata)."""
    found = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    parsed = _part_lease(part)
                    if parsed is not None:
                        found.append(parsed)
    return found


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

    ``run_subagent(request)`` (an async callable taking a :class:`~followups.TaskRequest`) is the
    subagent: its return value becomes the task's result, an exception its error. The tools must be
    called while ``pool`` is entered: on its own event loop, or on any other (``run_sync`` with a
    :class:`~followups.BlockingPool`), since spawning is thread-safe.
    """
    return FunctionToolset([as_pydantic_ai_tool(tool) for tool in task_tools(pool, run_subagent)])
