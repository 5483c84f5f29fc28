"""Background subagent results for a Claude Agent SDK session (``claude-agent-sdk``).

Extension points of the SDK this adapter uses:

- **Hooks** (``ClaudeAgentOptions.hooks``, a ``HookMatcher`` per event): one callback on
  ``UserPromptSubmit``, ``PostToolUse`` and ``PostToolUseFailure``. At each of these boundaries
  it drains the store with :func:`followups.take_followup` and returns the reminder as
  ``hookSpecificOutput.additionalContext``. Claude Code adds that context to the user turn of
  the next model call (after the prompt, or with the tool result), never to the system prompt.
- **An in-process SDK MCP server** (``create_sdk_mcp_server`` with ``SdkMcpTool``): the
  ``task``, ``task_status`` and ``cancel_task`` tools of :func:`followups.task_tools`, with async
  handlers, so the SDK runs them on the event-loop thread and ``pool.spawn`` is allowed.
- **The transport** (``Transport``): :class:`FollowupTransport` wraps the transport the SDK
  talks to Claude Code through, and settles each delivery there.

Why the transport: the SDK awaits a hook callback, and only then writes the callback's output
to Claude Code as a ``control_response`` with ``transport.write``. The callback never learns
whether that write succeeded, so it cannot settle the delivery itself. The wrapper sees the
write: it confirms the reminder once the response carrying it has been written, and gives it
back (the notifications return to the front of the queue, for the next boundary) if the write
raises or is cancelled, or if the session closes before the response is written. The hook
refuses to drain anything unless such a transport is connected, so a reminder can never be
drained without a way to settle it.

Usage::

    followups = ClaudeFollowups(pool, run_subagent)
    options = followups.options(ClaudeAgentOptions(...))
    async with ClaudeSDKClient(options, transport=followups.cli_transport(options)) as client: ...

Runs on trio or asyncio, like the SDK. Everything here runs on the event-loop thread of the
session.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, cast

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    Message,
    ResultMessage,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    McpSdkServerConfig,
    PostToolUseFailureHookSpecificOutput,
    PostToolUseHookSpecificOutput,
    SdkMcpTool,
    Transport,
    UserPromptSubmitHookSpecificOutput,
    create_sdk_mcp_server,
)
from claude_agent_sdk.types import HookEvent

from followups.delivery import ReminderDelivery, take_followup
from followups.pool import SubagentPool
from followups.reminders import ReminderRenderer
from followups.session import Session
from followups.tools import TaskRequest, Tool, task_tools
from followups.adapters._idle import check_idle_options, wait_for_result

__all__ = ["REMINDER_EVENTS", "ClaudeFollowups", "FollowupTransport"]

REMINDER_EVENTS: tuple[HookEvent, ...] = ("UserPromptSubmit", "PostToolUse", "PostToolUseFailure")
"""The hook events at which a pending reminder is handed to Claude Code."""

_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]+")


class ClaudeFollowups:
    """The followups hooks, tools and transport wrapper for one Claude Agent SDK session.

    ``pool`` runs the subagents that the model starts with the ``task`` tool, and its store
    holds their results; ``run_subagent(request)`` is the subagent itself (see
    :func:`followups.task_tools`). ``renderer`` defaults to the store's. The tools are served
    by an in-process MCP server named ``server_name``, so the model sees them as
    ``mcp__<server_name>__task`` and so on (:attr:`tool_names`).

    One instance serves one session at a time: the hooks hand reminders to the one
    :class:`FollowupTransport` that is connected. Call everything from the event-loop thread
    that entered ``pool``.

    **Sessions.** The Claude ``session_id`` (every hook input carries it) picks the followups
    session: ``pool.store.session(session_id)``, for the hooks and for the tools the model calls
    after them, so two Claude sessions on one store never see each other's results. Until a hook
    has run (or with ``sessions_by_id=False``) the pool's own session is used.

    **Idle wake-up.** Read the responses with :meth:`receive_response`: when a ``ResultMessage``
    ends a turn while subagents of the session are live, it waits for the next result (at most
    ``idle_timeout`` seconds per wait), sends its reminder as a follow-up query and goes on
    yielding that turn's messages, at most ``max_idle_resumes`` times per call;
    ``resume_when_idle=False`` ends at the first ``ResultMessage``.
    """

    def __init__(
        self,
        pool: SubagentPool,
        run_subagent: Callable[[TaskRequest], Awaitable[Any]],
        *,
        renderer: ReminderRenderer | None = None,
        server_name: str = "followups",
        sessions_by_id: bool = True,
        resume_when_idle: bool = True,
        idle_timeout: float | None = None,
        max_idle_resumes: int = 16,
    ) -> None:
        check_idle_options(idle_timeout, max_idle_resumes)
        if not callable(run_subagent):
            raise TypeError(f"run_subagent must be an async callable, got {type(run_subagent).__name__}")
        if not _SERVER_NAME.fullmatch(server_name):
            raise ValueError(f"server_name must be letters, digits, '_' or '-', got {server_name!r}")
        self.pool = pool
        self.store = pool.store
        self.renderer = renderer
        self.server_name = server_name
        self.sessions_by_id = sessions_by_id
        self.resume_when_idle = resume_when_idle
        self.idle_timeout = idle_timeout
        self.max_idle_resumes = max_idle_resumes
        self._run_subagent = run_subagent
        self._claude_session: str | None = None
        self._tools_by_session: dict[str, dict[str, Tool]] = {}
        self.tools: list[Tool] = task_tools(pool, run_subagent)
        self.mcp_server: McpSdkServerConfig = create_sdk_mcp_server(
            server_name, tools=[_sdk_mcp_tool(tool, self._tool_for) for tool in self.tools]
        )
        self._transport: FollowupTransport | None = None

    @property
    def session(self) -> Session:
        """The followups session of the Claude session being served (see the class docstring)."""
        if self._claude_session is None or not self.sessions_by_id:
            return self.store
        return self.store.session(self._claude_session)

    def _tool_for(self, name: str) -> Tool:
        session = self.session
        tools = self._tools_by_session.get(session.id)
        if tools is None:
            tools = {tool.name: tool for tool in task_tools(self.pool, self._run_subagent, session=session)}
            self._tools_by_session = {session.id: tools}  # one Claude session at a time
        return tools[name]

    async def receive_response(self, client: ClaudeSDKClient) -> AsyncIterator[Message]:
        """``client.receive_response()`` with idle wake-up: yields the messages of the turn up to
        its ``ResultMessage``; then, while subagents of the session are live (or results are
        pending), waits for the next result, sends its reminder with ``client.query`` (same
        ``session_id``) and yields that turn too. The reminder is confirmed once the query is
        written, given back if writing it fails or the wait is cancelled before it is sent."""
        resumes = 0
        # Over receive_messages, closed here: the SDK's receive_response leaves its inner
        # generator to the garbage collector when it stops at a ResultMessage.
        received = cast(AsyncGenerator[Message, None], client.receive_messages())
        async with contextlib.aclosing(received) as messages:
            async for message in messages:
                yield message
                if not isinstance(message, ResultMessage):
                    continue
                if not self.resume_when_idle or resumes >= self.max_idle_resumes:
                    return
                if message.session_id:
                    self._claude_session = message.session_id
                delivery = await self._next_reminder()
                if delivery is None:
                    return
                resumes += 1
                try:
                    await client.query(delivery.text, session_id=message.session_id or "default")
                except BaseException:
                    delivery.give_back()
                    raise
                delivery.confirm()

    async def _next_reminder(self) -> ReminderDelivery | None:
        await wait_for_result(self.session, self.idle_timeout)
        return take_followup(self.session, self.renderer)

    @property
    def tool_names(self) -> list[str]:
        """The names Claude Code gives the tools: ``mcp__<server_name>__<tool>``."""
        return [f"mcp__{self.server_name}__{tool.name}" for tool in self.tools]

    def hooks(self) -> dict[HookEvent, list[HookMatcher]]:
        """A ``ClaudeAgentOptions.hooks`` mapping with the reminder hook on each of
        :data:`REMINDER_EVENTS` (every tool, no matcher)."""
        return {event: [HookMatcher(hooks=[self.deliver_reminder])] for event in REMINDER_EVENTS}

    def options(self, base: ClaudeAgentOptions | None = None) -> ClaudeAgentOptions:
        """A copy of ``base`` (default: ``ClaudeAgentOptions()``) with the reminder hooks added
        after any hooks it has, the tools' MCP server added to ``mcp_servers``, and the tools
        added to ``allowed_tools`` so Claude Code runs them without a permission prompt.

        Raises ``ValueError`` if ``base.mcp_servers`` is a config file path (the in-process
        server can only join a dict) or already has a server named ``server_name``.
        """
        base = base if base is not None else ClaudeAgentOptions()
        if not isinstance(base.mcp_servers, dict):
            raise ValueError(
                "options.mcp_servers is a config file path; pass the MCP servers as a dict so the "
                f"followups server {self.server_name!r} can be added to them"
            )
        if self.server_name in base.mcp_servers:
            raise ValueError(
                f"options.mcp_servers already has a server named {self.server_name!r}; "
                "give ClaudeFollowups another server_name"
            )
        hooks: dict[HookEvent, list[HookMatcher]] = {
            event: list(matchers) for event, matchers in (base.hooks or {}).items()
        }
        for event, matchers in self.hooks().items():
            hooks[event] = [*hooks.get(event, []), *matchers]
        allowed = [*base.allowed_tools, *(name for name in self.tool_names if name not in base.allowed_tools)]
        return replace(
            base,
            hooks=hooks,
            mcp_servers={**base.mcp_servers, self.server_name: self.mcp_server},
            allowed_tools=allowed,
        )

    def transport(self, inner: Transport) -> FollowupTransport:
        """``inner`` wrapped so this session's reminder deliveries are settled when their hook
        response is written to it. Pass the result as ``transport=`` to ``ClaudeSDKClient`` or
        ``query``, together with :meth:`options`."""
        return FollowupTransport(inner, self)

    def cli_transport(self, options: ClaudeAgentOptions) -> FollowupTransport:
        """The SDK's own Claude Code subprocess transport for ``options`` (the result of
        :meth:`options`), wrapped by :meth:`transport`: what ``ClaudeSDKClient`` and ``query``
        would otherwise create themselves.

        The SDK skips its session-store resume (``session_store`` with ``resume``/
        ``continue_conversation``) for any transport passed in, this one included.
        """
        # The SDK builds its default transport this way and exposes no public constructor for
        # it; the extra pins the SDK's minor version, and the tests build one.
        from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport
        from claude_agent_sdk.types import _configure_can_use_tool

        return self.transport(SubprocessCLITransport(prompt="", options=_configure_can_use_tool(options)))

    async def deliver_reminder(
        self, hook_input: HookInput, tool_use_id: str | None, context: HookContext
    ) -> HookJSONOutput:
        """The hook callback: the pending reminder as ``additionalContext``, or ``{}``.

        Never suspends, so a cancelled hook request cannot lose a drained reminder; the
        reminder's delivery is settled by the connected :class:`FollowupTransport` when the SDK
        writes this output. Inside one of Claude Code's own subagents (the input has an
        ``agent_id``) it returns ``{}`` and leaves the reminder for the main conversation.
        Raises ``RuntimeError``, draining nothing, if no :class:`FollowupTransport` of this
        instance is connected, and ``ValueError`` for an event outside :data:`REMINDER_EVENTS`.
        """
        fields = cast(Mapping[str, Any], hook_input)
        event = fields.get("hook_event_name")
        if event not in REMINDER_EVENTS:
            raise ValueError(f"the followups reminder hook handles {', '.join(REMINDER_EVENTS)}, not {event!r}")
        if fields.get("agent_id") is not None:
            return {}
        session_id = fields.get("session_id")
        if isinstance(session_id, str) and session_id:
            self._claude_session = session_id
        transport = self._transport
        if transport is None:
            raise RuntimeError(
                "followups cannot deliver reminders in this session: its transport is not a FollowupTransport. "
                "Pass transport=ClaudeFollowups.cli_transport(options) (or .transport(your_transport)) to the "
                "ClaudeSDKClient or query() that uses ClaudeFollowups.options()."
            )
        delivery = take_followup(self.session, self.renderer)
        if delivery is None:
            return {}
        transport.hand_off(delivery)
        return {"hookSpecificOutput": _reminder_context(event, delivery.text)}

    def _attach(self, transport: FollowupTransport) -> None:
        if self._transport is not None and self._transport is not transport:
            raise RuntimeError(
                "this ClaudeFollowups already serves a connected session; create one ClaudeFollowups per session"
            )
        self._transport = transport

    def _detach(self, transport: FollowupTransport) -> None:
        if self._transport is transport:
            self._transport = None


class FollowupTransport(Transport):
    """A transport that settles reminder deliveries when the hook response carrying them is written.

    Forwards every call to ``inner``. A ``write`` of the response that carries a reminder handed
    out by the reminder hook confirms the delivery once ``inner.write`` has returned, and gives
    it back if ``inner.write`` raises or is cancelled; either way the error propagates to the
    SDK. ``close`` gives back reminders whose response was never written. Connecting registers
    this transport with its :class:`ClaudeFollowups` (``RuntimeError`` if another one is
    connected); closing unregisters it. Used by the SDK on the session's event-loop thread.
    """

    def __init__(self, inner: Transport, followups: ClaudeFollowups) -> None:
        self.inner = inner
        self.followups = followups
        self._handed_off: list[ReminderDelivery] = []

    def hand_off(self, delivery: ReminderDelivery) -> None:
        """Hold ``delivery`` until the response carrying its text is written (or the session closes)."""
        self._handed_off.append(delivery)

    async def connect(self) -> None:
        self.followups._attach(self)
        try:
            await self.inner.connect()
        except BaseException:
            self.followups._detach(self)
            raise

    async def write(self, data: str) -> None:
        carried = self._take_carried(data)
        if carried is None:
            await self.inner.write(data)
            return
        try:
            await self.inner.write(data)
        except BaseException:
            carried.give_back()
            raise
        carried.confirm()

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        return self.inner.read_messages()

    async def close(self) -> None:
        self.followups._detach(self)
        unwritten, self._handed_off = self._handed_off, []
        for delivery in unwritten:
            delivery.give_back()
        await self.inner.close()

    def is_ready(self) -> bool:
        return self.inner.is_ready()

    async def end_input(self) -> None:
        await self.inner.end_input()

    def _take_carried(self, data: str) -> ReminderDelivery | None:
        """The handed-off delivery whose text this line carries as ``additionalContext``, if any.

        Matched by text because the hook callback is not told the id of the request it
        answers; two deliveries pending at once never share a text, since a task has at most
        one pending notification.
        """
        if not self._handed_off or "additionalContext" not in data:
            return None
        context = _additional_context(data)
        for index, delivery in enumerate(self._handed_off):
            if delivery.text == context:
                return self._handed_off.pop(index)
        return None


def _additional_context(line: str) -> str | None:
    """The ``additionalContext`` of a successful hook ``control_response`` line, else None."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "control_response":
        return None
    response = message.get("response")
    if not isinstance(response, dict) or response.get("subtype") != "success":
        return None
    payload = response.get("response")
    output = payload.get("hookSpecificOutput") if isinstance(payload, dict) else None
    context = output.get("additionalContext") if isinstance(output, dict) else None
    return context if isinstance(context, str) else None


def _reminder_context(
    event: HookEvent, text: str
) -> UserPromptSubmitHookSpecificOutput | PostToolUseHookSpecificOutput | PostToolUseFailureHookSpecificOutput:
    if event == "UserPromptSubmit":
        return {"hookEventName": "UserPromptSubmit", "additionalContext": text}
    if event == "PostToolUse":
        return {"hookEventName": "PostToolUse", "additionalContext": text}
    return {"hookEventName": "PostToolUseFailure", "additionalContext": text}


def _sdk_mcp_tool(tool: Tool, resolve: Callable[[str], Tool]) -> SdkMcpTool[Any]:
    """``tool`` as an in-process MCP tool: the same name, description and JSON schema; an
    async handler (run on the event-loop thread) that runs ``resolve(name)`` (the tool of the
    session being served) and reports invalid arguments and errors as error results the model
    reads."""

    async def call(arguments: dict[str, Any]) -> dict[str, Any]:
        outcome = await resolve(tool.name).invoke(arguments)
        return {"content": [{"type": "text", "text": outcome.content}], "is_error": outcome.is_error}

    return SdkMcpTool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.parameters.model_json_schema(),
        handler=call,
    )
