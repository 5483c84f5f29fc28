"""A small reference agent loop with named hooks, the ``Model`` protocol, and ``ScriptedModel``,
a deterministic offline model that plays a script."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from .errors import FollowupsError
from .hooks import UserMessage
from .tools import Tool, ToolOutcome

__all__ = [
    "HOOK_NAMES",
    "AgentLoop",
    "AssistantMessage",
    "BackgroundWork",
    "LoopLimitExceeded",
    "Message",
    "Model",
    "ScriptExhausted",
    "ScriptedModel",
    "ToolCall",
    "ToolResultMessage",
    "tool_call",
]

HOOK_NAMES = (
    "before_tool_call",
    "after_tool_call",
    "get_steering_messages",
    "get_followup_messages",
    "transform_prompt",
    "should_stop_after_turn",
)


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class AssistantMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["assistant"] = "assistant"
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ToolResultMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["tool"] = "tool"
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False


Message = UserMessage | AssistantMessage | ToolResultMessage

_call_ids = itertools.count(1)


def tool_call(name: str, /, **arguments: Any) -> ToolCall:
    """A tool call with a fresh id, for scripts."""
    return ToolCall(id=f"call_{next(_call_ids)}", name=name, arguments=arguments)


class Model(Protocol):
    """What the loop needs of a model: one reply to the conversation so far."""

    async def respond(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> AssistantMessage: ...


class BackgroundWork(Protocol):
    """What idle resume needs: a :class:`BackgroundStore` or a :class:`SubagentPool`."""

    def live_count(self) -> int: ...

    async def wait_for_notification(self, timeout: float | None = None) -> bool: ...


class LoopLimitExceeded(FollowupsError):
    """The loop made ``max_model_calls`` model calls for one prompt without the turn ending."""


class ScriptExhausted(FollowupsError):
    """A :class:`ScriptedModel` was called more times than its script has steps."""


ScriptStep = (
    AssistantMessage
    | str
    | Callable[[Sequence[Message]], AssistantMessage | str | Awaitable[AssistantMessage | str]]
)


class ScriptedModel:
    """A deterministic offline model: each call plays the next step of ``script``.

    A step is an :class:`AssistantMessage`, a string (a text reply that ends the turn), or a
    callable that receives the conversation and returns either. Every input is kept in
    ``inputs`` so tests and demos can show what the model saw.
    """

    def __init__(self, script: Iterable[ScriptStep]) -> None:
        self._steps = iter(script)
        self.inputs: list[list[Message]] = []

    async def respond(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> AssistantMessage:
        self.inputs.append(list(messages))
        try:
            step = next(self._steps)
        except StopIteration:
            raise ScriptExhausted(f"the script has no step for model call {len(self.inputs)}") from None
        reply = step(messages) if callable(step) else step
        if inspect.isawaitable(reply):
            reply = await reply
        return AssistantMessage(content=reply) if isinstance(reply, str) else reply


class AgentLoop:
    """A readable agent loop: the model replies, the loop runs the tools it calls and feeds
    the results back, until the model ends its turn.

    Hooks are registered by name (:data:`HOOK_NAMES`); each may be sync or async, and several
    may share a name (they run in registration order):

    - ``transform_prompt(prompt) -> str``: before a user prompt is added (chained).
    - ``before_tool_call(call) -> str | None``: a string skips the tool and stands as its result.
    - ``after_tool_call(call, result) -> ToolResultMessage | None``: a replacement result.
    - ``get_steering_messages() -> list[UserMessage]``: added after each round of tool calls.
    - ``get_followup_messages() -> list[UserMessage]``: when the model ends its turn; if any
      are returned, the loop continues with them (a follow-up turn).
    - ``should_stop_after_turn(reply) -> bool``: after each reply; True ends the run there.

    With ``idle_resume`` (a store or pool), a turn that ends while background work is live
    does not end the run: the loop sleeps until the next notification and continues, so
    results never wait for the next user message.

    Tool calls of one reply: synchronous handlers run inline in call order, async ones
    concurrently; results are added in call order. A tool that raises becomes an error result
    for the model; it never ends the loop. Cancelling :meth:`run` cancels running tools.
    """

    def __init__(
        self,
        model: Model,
        tools: Iterable[Tool] = (),
        *,
        idle_resume: BackgroundWork | None = None,
        max_model_calls: int = 50,
    ) -> None:
        self.model = model
        self.tools = {tool.name: tool for tool in tools}
        self.idle_resume = idle_resume
        self.max_model_calls = max_model_calls
        self.messages: list[Message] = []
        self._hooks: dict[str, list[Callable[..., Any]]] = {name: [] for name in HOOK_NAMES}

    def register_hook(self, name: str, hook: Callable[..., Any]) -> None:
        if name not in self._hooks:
            raise ValueError(f"unknown hook {name!r}; the hooks are: {', '.join(HOOK_NAMES)}")
        self._hooks[name].append(hook)

    async def run(self, prompt: str) -> AssistantMessage:
        """Send ``prompt`` and run until the turn ends; returns the model's last reply."""
        for transform in self._hooks["transform_prompt"]:
            prompt = await _call(transform, prompt)
        self.messages.append(UserMessage(content=prompt))
        for _ in range(self.max_model_calls):
            reply = await self.model.respond(list(self.messages), [tool.spec() for tool in self.tools.values()])
            self.messages.append(reply)
            if await self._any("should_stop_after_turn", reply):
                return reply
            if reply.tool_calls:
                self.messages.extend(await self._run_tools(reply.tool_calls))
                self.messages.extend(await self._collect("get_steering_messages"))
                continue
            followups = await self._next_followups()
            if not followups:
                return reply
            self.messages.extend(followups)
        raise LoopLimitExceeded(f"no end of turn after {self.max_model_calls} model calls")

    async def _next_followups(self) -> list[UserMessage]:
        """Follow-up messages for the ended turn, waiting for background work if configured."""
        while True:
            followups = await self._collect("get_followup_messages")
            if followups or self.idle_resume is None or self.idle_resume.live_count() == 0:
                return followups
            await self.idle_resume.wait_for_notification()

    async def _run_tools(self, calls: Sequence[ToolCall]) -> list[ToolResultMessage]:
        results: list[ToolResultMessage | None] = [None] * len(calls)

        async def run_one(index: int, call: ToolCall) -> None:
            results[index] = await self._run_tool(call)

        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                tool = self.tools.get(call.name)
                if tool is not None and tool.is_async:
                    group.start_soon(run_one, index, call)
                else:
                    await run_one(index, call)
        return [result for result in results if result is not None]

    async def _run_tool(self, call: ToolCall) -> ToolResultMessage:
        outcome = await self._tool_outcome(call)
        result = ToolResultMessage(
            tool_call_id=call.id, name=call.name, content=outcome.content, is_error=outcome.is_error
        )
        for hook in self._hooks["after_tool_call"]:
            replacement = await _call(hook, call, result)
            if replacement is not None:
                result = replacement
        return result

    async def _tool_outcome(self, call: ToolCall) -> ToolOutcome:
        for hook in self._hooks["before_tool_call"]:
            blocked = await _call(hook, call)
            if blocked is not None:
                return ToolOutcome(str(blocked), is_error=True)
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return ToolOutcome(f"Unknown tool {call.name!r}; the tools are: {known}.", is_error=True)
        return await tool.invoke(call.arguments)

    async def _collect(self, name: str) -> list[UserMessage]:
        messages: list[UserMessage] = []
        for hook in self._hooks[name]:
            messages.extend(await _call(hook))
        return messages

    async def _any(self, name: str, *args: Any) -> bool:
        for hook in self._hooks[name]:
            if await _call(hook, *args):
                return True
        return False


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
