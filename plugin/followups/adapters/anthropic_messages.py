"""followups for a hand-written loop over the Anthropic Messages API (``anthropic`` SDK).

Extension points of the SDK used here, all public:

- the ``messages`` list the caller passes to ``client.messages.create(...)``: a list of
  ``MessageParam`` dicts. A reminder rides in it as a ``TextBlockParam`` in a user turn, never in
  the ``system`` parameter or a system-role message;
- ``ToolParam`` (``name``, ``description``, ``input_schema``) for the ``tools`` parameter;
- ``ToolUseBlock`` in a response's ``content`` and ``ToolResultBlockParam`` in the user turn
  that answers it.

Public names:

- :func:`reminder_for_call` / :class:`CallReminder`: the delivery transaction around one model
  call. It takes the pending notifications (:func:`followups.take_followup`), places the
  reminder in the caller's message list, confirms it when the call returns, and when the call
  raises (or is cancelled) removes it from that list again and gives the notifications back to
  the store, so the retry carries it once.
- :func:`create_with_followups`: ``client.messages.create(...)`` inside that transaction.
- :func:`add_reminder` / :class:`ReminderPlacement`, :func:`reminder_block`: the placement alone.
- :func:`tool_params` and :func:`run_tool_uses`: :func:`followups.task_tools` (or any
  :class:`followups.Tool`) as ``ToolParam``s, and ``tool_use`` blocks run into ``tool_result``
  blocks on the event loop, where ``SubagentPool.spawn`` may be called.
- :func:`run_agent_loop`: the whole loop (call, run tools, and when the model ends its turn while
  subagents run, wait for the next result and continue with its reminder).
- Synchronous forms for an ``anthropic.Anthropic`` client and a :class:`followups.BlockingPool`:
  :func:`create_with_followups_sync`, :func:`run_tool_uses_sync`, :func:`run_agent_loop_sync`.

anthropic ≥ 2 sends requests with ``httpx2``: an ``http_client`` from the ``httpx`` package makes
the client's constructor raise ``TypeError``; pass an ``httpx2.AsyncClient`` / ``httpx2.Client``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import anyio
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import (
    ContentBlock,
    Message,
    MessageParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    UserMessageParam,
)

from ..blocking import BlockingPool
from ..delivery import ReminderDelivery, label_delivery, settle_from_texts, take_followup
from ..reminders import ReminderRenderer
from ..session import Session
from ..tools import Tool, ToolOutcome
from ._idle import check_idle_options, wait_for_result


__all__ = [
    "CallReminder",
    "ReminderPlacement",
    "add_reminder",
    "create_with_followups",
    "reminder_block",
    "reminder_for_call",
    "create_with_followups_sync",
    "run_agent_loop",
    "run_agent_loop_sync",
    "run_tool_uses",
    "run_tool_uses_sync",
    "tool_params",
    "user_texts",
]


def reminder_block(text: str) -> TextBlockParam:
    """The reminder as a Messages API text block, for a user turn."""
    return {"type": "text", "text": text}


def user_texts(messages: Iterable[object]) -> Iterator[str]:
    """The texts of the user turns in ``messages`` (a string ``content``, or its ``text``
    blocks): where a reminder rides, and what recognises one in a history."""
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, Sequence):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
                    yield block["text"]


class ReminderPlacement:
    """Where :func:`add_reminder` put a reminder in a message list, so it can be taken out again.

    ``turn`` is the user turn that carries the reminder block: either a turn appended to the
    list, or a copy of the caller's last user turn that replaced it (the caller's own message
    and content objects are never modified).
    """

    __slots__ = ("messages", "replaced", "turn")

    def __init__(self, messages: list[MessageParam], turn: MessageParam, replaced: MessageParam | None) -> None:
        self.messages = messages
        self.turn = turn
        self.replaced = replaced

    def remove(self) -> bool:
        """Take the reminder out of the list: drop the appended turn, or put the caller's
        original turn back in place of the copy. The turn is found by identity, so messages
        added to the list since do not confuse it. Returns False if the turn is no longer in
        the list (already removed, or the caller took it out). Never suspends; call it from
        the code that owns the list."""
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index] is self.turn:
                if self.replaced is None:
                    del self.messages[index]
                else:
                    self.messages[index] = self.replaced
                return True
        return False


def add_reminder(messages: list[MessageParam], text: str) -> ReminderPlacement:
    """Put ``text`` into ``messages`` as a text block in a user turn, and say where.

    If the last message is a user turn (for instance the one carrying the ``tool_result``
    blocks that answer the model's ``tool_use``), the block is added to it as its last block:
    the API requires a user turn's ``tool_result`` blocks to come before any other content, and
    one user turn is what the API expects between two assistant turns. Otherwise (an empty
    list, or an assistant or system message last) a new user turn with the block is appended.

    The caller's last turn is replaced by a copy, never changed in place. If its content was a
    one-shot iterable, it is read once into a list, and removing the reminder restores the turn
    with that list.

    Raises :class:`TypeError` if the last message is not a mapping with a ``role``, or is a
    user turn without ``content``.
    """
    block = reminder_block(text)
    if messages:
        last = messages[-1]
        if not isinstance(last, Mapping) or "role" not in last:
            raise TypeError(f"the last message must be a MessageParam dict with a 'role', got {last!r}")
        if last["role"] == "user":
            if "content" not in last:
                raise TypeError(f"the last user message has no 'content': {last!r}")
            content = last["content"]
            original = last
            if isinstance(content, str):
                existing: list[Any] = [reminder_block(content)] if content else []
            else:
                existing = list(content)
                if not isinstance(content, Sequence):
                    original = cast(UserMessageParam, {**last, "content": existing})
            turn = cast(UserMessageParam, {**last, "content": [*existing, block]})
            messages[-1] = turn
            return ReminderPlacement(messages, turn, original)
    new_turn: UserMessageParam = {"role": "user", "content": [block]}
    messages.append(new_turn)
    return ReminderPlacement(messages, new_turn, None)


class CallReminder:
    """The reminder riding in one ``client.messages.create(...)`` call: the unsettled delivery
    (:class:`followups.ReminderDelivery`) and its placement in the caller's message list.

    Used as ``with reminder_for_call(store, messages):`` around the model call, leaving the
    block normally confirms the delivery, and leaving it by an exception or a cancellation
    removes the reminder from ``messages`` and gives the notifications back to the front of
    the store's queue, for the next call. Put only the model call inside the block: whatever
    raises there counts as a failed delivery. Without ``with``, call :meth:`confirm` or
    :meth:`give_back` yourself. Both are idempotent; the first one decides.

    When nothing was pending, ``delivery`` and ``placement`` are None and settling does
    nothing. Not thread-safe with respect to ``messages``: settle it on the thread that owns
    the list (the delivery itself may be settled from any thread).
    """

    __slots__ = ("delivery", "placement")

    def __init__(self, delivery: ReminderDelivery | None, placement: ReminderPlacement | None) -> None:
        self.delivery = delivery
        self.placement = placement

    @property
    def text(self) -> str | None:
        """The reminder text placed in the messages, or None when nothing was pending."""
        return None if self.delivery is None else self.delivery.text

    @property
    def task_ids(self) -> tuple[str, ...]:
        """The ids of the tasks the reminder reports on; empty when nothing was pending."""
        return () if self.delivery is None else self.delivery.task_ids

    def confirm(self) -> None:
        """The call succeeded: the reminder stays in the messages and is delivered for good."""
        if self.delivery is not None:
            self.delivery.confirm()

    def give_back(self) -> int:
        """The call failed: take the reminder out of the messages and put its notifications
        back at the front of the store's queue. Returns how many went back; 0 when nothing
        was pending or the delivery was already settled (the messages are then left alone)."""
        if self.delivery is None or self.delivery.settled or self.placement is None:
            return 0
        self.placement.remove()
        return self.delivery.give_back()

    def __enter__(self) -> CallReminder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.confirm()
        else:
            self.give_back()


def reminder_for_call(
    store: Session, messages: list[MessageParam], renderer: ReminderRenderer | None = None
) -> CallReminder:
    """Drain ``store`` and place the reminder in ``messages`` (see :func:`add_reminder`) for
    the model call about to be made with them; settle the result (see :class:`CallReminder`).

    The reminder is the standalone ``followup.j2`` form within the store's
    ``reminder_budget_chars``; what does not fit stays pending. ``renderer`` defaults to the
    store's. Never suspends, so no cancellation can come between the drain and the placement.
    If the placement raises (a malformed last message), the notifications go back before the
    error propagates.

    The block carries no metadata (the API accepts no unknown keys), so the delivery is
    labelled and recognised by its exact text (:func:`followups.delivery.settle_from_texts`): a
    reminder that ``messages`` already holds from a call whose delivery was never settled (a
    process that died after saving the list) is confirmed first, even after its lease expired,
    and not delivered a second time.
    """
    settle_from_texts(store, user_texts(messages))
    delivery = take_followup(store, renderer)
    if delivery is None:
        return CallReminder(None, None)
    try:
        label_delivery(delivery, user_texts(messages))
        placement = add_reminder(messages, delivery.text)
    except BaseException:
        delivery.give_back()
        raise
    return CallReminder(delivery, placement)


async def create_with_followups(
    client: AsyncAnthropic,
    store: Session,
    *,
    messages: list[MessageParam],
    renderer: ReminderRenderer | None = None,
    **params: Any,
) -> Message:
    """``await client.messages.create(messages=messages, **params)`` inside
    :func:`reminder_for_call`: pending results ride in ``messages`` (which keeps the reminder on
    success), and a call that raises or is cancelled leaves ``messages`` as it was and the
    notifications pending.

    Call it from the event loop that owns ``client``, under trio or asyncio. Streaming is not
    supported here, since the delivery would be confirmed before the stream is read; for
    ``stream=True``, use ``with reminder_for_call(...)`` around both the call and the reading.
    """
    if params.get("stream"):
        raise ValueError(
            "create_with_followups does not stream; wrap your streaming call and its reading in "
            "`with reminder_for_call(store, messages):` instead"
        )
    with reminder_for_call(store, messages, renderer):
        message: Message = await client.messages.create(messages=messages, **params)
    return message


def tool_params(tools: Iterable[Tool]) -> list[ToolParam]:
    """``tools`` (such as :func:`followups.task_tools`) as the Messages API's ``ToolParam``s:
    the same names, descriptions and JSON schemas (:meth:`followups.Tool.spec` has the API's
    ``name`` / ``description`` / ``input_schema`` shape)."""
    return [cast(ToolParam, tool.spec()) for tool in tools]


async def run_tool_uses(
    tools: Iterable[Tool], response: Message | Iterable[ContentBlock]
) -> list[ToolResultBlockParam]:
    """Run every ``tool_use`` block of ``response`` (a ``Message`` or its ``content``) and
    return one ``tool_result`` block for each, in the same order, for the next user turn.

    Await it on the event loop thread (trio or asyncio) that entered the ``SubagentPool``:
    synchronous handlers, such as the ``task`` tool's, run inline there in the model's order,
    so ``pool.spawn`` works and the pool's cap holds; async handlers run concurrently. Nothing
    a tool does fails the loop: an unknown tool name, arguments that do not validate, or a
    handler that raises an ``Exception`` become ``is_error`` results that tell the model what
    went wrong. Cancelling the await cancels running async handlers.

    Raises :class:`ValueError` if two tools share a name.
    """
    by_name = _by_name(tools)
    content = response.content if isinstance(response, Message) else response
    uses = [block for block in content if isinstance(block, ToolUseBlock)]
    results: list[ToolResultBlockParam | None] = [None] * len(uses)

    async def run_one(index: int, use: ToolUseBlock) -> None:
        outcome = await _tool_outcome(by_name, use)
        results[index] = {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": outcome.content,
            "is_error": outcome.is_error,
        }

    async with anyio.create_task_group() as group:
        for index, use in enumerate(uses):
            used_tool = by_name.get(use.name)
            if used_tool is not None and used_tool.is_async:
                group.start_soon(run_one, index, use)
            else:
                await run_one(index, use)
    return [result for result in results if result is not None]  # all filled once the group has exited


def _by_name(tools: Iterable[Tool]) -> dict[str, Tool]:
    by_name: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in by_name:
            raise ValueError(f"two tools are named {tool.name!r}; tool names must be unique")
        by_name[tool.name] = tool
    return by_name


def _unknown_tool(by_name: Mapping[str, Tool], use: ToolUseBlock) -> ToolOutcome:
    known = ", ".join(by_name) or "none"
    return ToolOutcome(f"Unknown tool {use.name!r}; the tools are: {known}.", is_error=True)


async def _tool_outcome(by_name: Mapping[str, Tool], use: ToolUseBlock) -> ToolOutcome:
    tool = by_name.get(use.name)
    if tool is None:
        return _unknown_tool(by_name, use)
    return await tool.invoke(use.input)


def create_with_followups_sync(
    client: Anthropic,
    store: Session,
    *,
    messages: list[MessageParam],
    renderer: ReminderRenderer | None = None,
    **params: Any,
) -> Message:
    """:func:`create_with_followups` for the synchronous ``anthropic.Anthropic`` client."""
    if params.get("stream"):
        raise ValueError(
            "create_with_followups_sync does not stream; wrap your streaming call and its reading in "
            "`with reminder_for_call(store, messages):` instead"
        )
    with reminder_for_call(store, messages, renderer):
        message: Message = client.messages.create(messages=messages, **params)
    return message


def run_tool_uses_sync(
    tools: Iterable[Tool], response: Message | Iterable[ContentBlock], *, pool: BlockingPool | None = None
) -> list[ToolResultBlockParam]:
    """:func:`run_tool_uses` for synchronous code: synchronous handlers (the task tools') run
    here, in the model's order; async handlers run on ``pool``'s loop, one after another, and
    without a ``pool`` they come back as ``is_error`` results saying so. Blocks the calling
    thread, which must not be the pool's loop thread."""
    by_name = _by_name(tools)
    content = response.content if isinstance(response, Message) else response
    results: list[ToolResultBlockParam] = []
    for block in content:
        if not isinstance(block, ToolUseBlock):
            continue
        tool = by_name.get(block.name)
        if tool is not None and tool.is_async:
            if pool is None:
                outcome = ToolOutcome(f"Tool {block.name!r} is async and no BlockingPool was given to run it.", is_error=True)
            else:
                outcome = pool.call(_tool_outcome, by_name, block)
        elif tool is None:
            outcome = _unknown_tool(by_name, block)
        else:
            outcome = tool.invoke_sync(block.input)
        results.append(
            {"type": "tool_result", "tool_use_id": block.id, "content": outcome.content, "is_error": outcome.is_error}
        )
    return results


async def run_agent_loop(
    client: AsyncAnthropic,
    store: Session,
    *,
    messages: list[MessageParam],
    tools: Sequence[Tool] = (),
    session: str | None = None,
    max_turns: int = 100,
    resume_when_idle: bool = True,
    idle_timeout: float | None = None,
    max_idle_resumes: int = 16,
    renderer: ReminderRenderer | None = None,
    **params: Any,
) -> Message:
    """A whole Messages API agent loop over ``messages`` (which it extends in place): each call
    through :func:`create_with_followups`, ``tool_use`` blocks through :func:`run_tool_uses`.

    ``session`` names the conversation, ``store.session(session)``, whose reminders the loop
    delivers (None: ``store`` itself); build ``tools`` over the same session
    (``task_tools(pool, run_subagent, session=store.session(session))``). Idle wake-up
    (``resume_when_idle``): when the model ends its turn while subagents of the session are live,
    the loop waits for the next result (at most ``idle_timeout`` seconds per wait) and calls the
    model again with its reminder, at most ``max_idle_resumes`` times. Returns the last response;
    raises ``RuntimeError`` after ``max_turns`` model calls. ``params`` go to
    ``messages.create`` (``model``, ``max_tokens``, ``system``…); ``tools`` become its ``tools``.
    """
    conversation = _conversation(store, session, max_turns, idle_timeout, max_idle_resumes)
    if tools and "tools" not in params:
        params["tools"] = tool_params(tools)
    resumes = 0
    for _ in range(max_turns):
        response = await create_with_followups(client, conversation, messages=messages, renderer=renderer, **params)
        messages.append(cast(MessageParam, response.to_param()))
        if response.stop_reason == "tool_use":
            messages.append({"role": "user", "content": await run_tool_uses(tools, response)})
            continue
        if not resume_when_idle or resumes >= max_idle_resumes or not await wait_for_result(conversation, idle_timeout):
            return response
        resumes += 1
    raise RuntimeError(f"run_agent_loop stopped after max_turns={max_turns} model calls")


def run_agent_loop_sync(
    client: Anthropic,
    store: Session,
    *,
    pool: BlockingPool,
    messages: list[MessageParam],
    tools: Sequence[Tool] = (),
    session: str | None = None,
    max_turns: int = 100,
    resume_when_idle: bool = True,
    idle_timeout: float | None = None,
    max_idle_resumes: int = 16,
    renderer: ReminderRenderer | None = None,
    **params: Any,
) -> Message:
    """:func:`run_agent_loop` for synchronous code: the ``anthropic.Anthropic`` client, tools
    run by :func:`run_tool_uses_sync`, and the idle waits on ``pool`` (a
    :class:`~followups.BlockingPool`, whose ``pool.pool`` the task tools are built over).
    Blocks the calling thread."""
    conversation = _conversation(store, session, max_turns, idle_timeout, max_idle_resumes)
    if tools and "tools" not in params:
        params["tools"] = tool_params(tools)
    resumes = 0
    for _ in range(max_turns):
        response = create_with_followups_sync(client, conversation, messages=messages, renderer=renderer, **params)
        messages.append(cast(MessageParam, response.to_param()))
        if response.stop_reason == "tool_use":
            messages.append({"role": "user", "content": run_tool_uses_sync(tools, response, pool=pool)})
            continue
        if not resume_when_idle or resumes >= max_idle_resumes or not pool.call(wait_for_result, conversation, idle_timeout):
            return response
        resumes += 1
    raise RuntimeError(f"run_agent_loop_sync stopped after max_turns={max_turns} model calls")


def _conversation(
    store: Session, session: str | None, max_turns: int, idle_timeout: float | None, max_idle_resumes: int
) -> Session:
    if not isinstance(store, Session):
        raise TypeError(f"store must be a followups.BackgroundStore or Session, got {type(store).__name__}")
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns must be a positive int, got {max_turns!r}")
    check_idle_options(idle_timeout, max_idle_resumes)
    return store if session is None else store.session(session)
