"""The Anthropic Messages API adapter, in a real hand-written loop over ``AsyncAnthropic``.

The API is replaced by an ``httpx2.MockTransport`` handed to the SDK's client, so every request
goes through the SDK's real request building and response parsing, offline. The transport
records each request body: that is exactly what the model would receive.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("anthropic")
pytest.importorskip("httpx2")

import anthropic  # noqa: E402
import httpx2  # noqa: E402
from anthropic import AsyncAnthropic  # noqa: E402
from anthropic.types import Message, MessageParam  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from followups import BackgroundStore, BlockingPool, FollowupSettings, SubagentPool, TaskRequest, TaskState, Tool, ToolOutcome, task_tools  # noqa: E402
from followups.delivery import ReminderDelivery  # noqa: E402
from helpers import FakeClock  # noqa: E402
from followups.adapters.anthropic_messages import (  # noqa: E402
    ReminderPlacement,
    add_reminder,
    create_with_followups,
    reminder_block,
    reminder_for_call,
    run_agent_loop,
    run_agent_loop_sync,
    run_tool_uses,
    run_tool_uses_sync,
    tool_params,
)

MODEL = "claude-test"
SYSTEM = "You are a careful engineer."

Body = dict[str, Any]
Step = Callable[[Body], "httpx2.Response | Body | Awaitable[httpx2.Response | Body]"]


# -- the scripted Messages API --------------------------------------------------------------


class ScriptedMessagesAPI:
    """Stands in for the Messages API: answers the n-th request with the n-th step and keeps
    every request body. A step returns a response body, an ``httpx2.Response``, or raises."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.requests: list[Body] = []

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        assert request.method == "POST" and request.url.path == "/v1/messages"
        body = json.loads(request.content)
        self.requests.append(body)
        if len(self.requests) > len(self.steps):
            raise AssertionError(f"unexpected model call #{len(self.requests)}: {body['messages'][-1]!r}")
        reply = self.steps[len(self.requests) - 1](body)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply if isinstance(reply, httpx2.Response) else httpx2.Response(200, json=reply)

    def client(self) -> AsyncAnthropic:
        http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))
        return AsyncAnthropic(api_key="test", http_client=http_client, max_retries=0)


def assistant_reply(content: list[Body], stop_reason: str) -> Body:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def text_reply(text: str) -> Body:
    return assistant_reply([{"type": "text", "text": text}], "end_turn")


def tool_use_reply(*uses: tuple[str, str, Body]) -> Body:
    blocks = [{"type": "tool_use", "id": use_id, "name": name, "input": args} for use_id, name, args in uses]
    return assistant_reply(blocks, "tool_use")


def server_error(body: Body) -> httpx2.Response:
    return httpx2.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "Internal error"}})


def connection_reset(body: Body) -> httpx2.Response:
    raise httpx2.ConnectError("connection reset by peer")


# -- what the model received ----------------------------------------------------------------


def reminders_in(body: Body) -> list[tuple[int, str]]:
    """(message index, text) of every reminder text block in the request's messages."""
    found = []
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block.get("type") == "text" and block["text"].startswith("<system-reminder>"):
                assert message["role"] == "user", f"a reminder in a {message['role']} message"
                found.append((index, block["text"]))
    assert "<system-reminder>" not in json.dumps(body.get("system", "")), "a reminder in the system prompt"
    return found


def reminder_counts(api: ScriptedMessagesAPI) -> list[int]:
    return [len(reminders_in(body)) for body in api.requests]


def started_task_id(body: Body) -> str:
    """The task id the ``task`` tool reported, from the tool_result the model received."""
    for message in reversed(body["messages"]):
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_result":
                match = re.search(r"Started background task (\S+) ", block["content"])
                if match:
                    return match.group(1)
    raise AssertionError("no task was started")


# -- the hand-written loop ------------------------------------------------------------------


async def run_agent(
    client: AsyncAnthropic, store: BackgroundStore, tools: list[Tool], messages: list[MessageParam]
) -> Message:
    """A plain Messages API agent loop: call, run tools, and when the turn ends with subagents
    still running, sleep until one reports and continue with its reminder."""
    while True:
        with reminder_for_call(store, messages):
            response = await client.messages.create(
                model=MODEL, max_tokens=1024, system=SYSTEM, tools=tool_params(tools), messages=messages
            )
        messages.append(response.to_param())
        if response.stop_reason == "tool_use":
            messages.append({"role": "user", "content": await run_tool_uses(tools, response)})
            continue
        if not store.has_pending_notifications():
            if store.live_count() == 0:
                return response
            await store.wait_for_notification()


def scan_subagent(release: anyio.Event) -> Callable[[TaskRequest], Awaitable[str]]:
    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return f"found 3 TODOs for: {request.prompt}"

    return subagent


START_SCAN = ("toolu_1", "task", {"description": "scan TODOs", "prompt": "list TODO comments"})


async def spawn_then_resume_scenario(store: BackgroundStore) -> tuple[ScriptedMessagesAPI, list[MessageParam]]:
    """The model starts a subagent and ends its turn; the subagent finishes while the loop
    sleeps; the loop resumes with the reminder; then the user sends one more prompt."""
    release = anyio.Event()

    def ends_turn_while_subagent_runs(body: Body) -> Body:
        release.set()
        return text_reply("The scan runs in the background; I will report when it is done.")

    api = ScriptedMessagesAPI(
        [
            lambda body: tool_use_reply(START_SCAN),
            ends_turn_while_subagent_runs,
            lambda body: text_reply("The scan found 3 TODOs."),
            lambda body: text_reply("You're welcome."),
        ]
    )
    messages: list[MessageParam] = [{"role": "user", "content": "Scan the repository for TODOs in the background."}]
    async with api.client() as client, SubagentPool(store) as pool:
        tools = task_tools(pool, scan_subagent(release))
        await run_agent(client, store, tools, messages)
        messages.append({"role": "user", "content": "Thanks!"})
        await run_agent(client, store, tools, messages)
    return api, messages


def assert_spawn_then_resume(api: ScriptedMessagesAPI, store: BackgroundStore) -> None:
    assert reminder_counts(api) == [0, 0, 1, 1]
    task_id = started_task_id(api.requests[1])
    tool_result = api.requests[1]["messages"][-1]["content"][0]
    assert tool_result["tool_use_id"] == "toolu_1" and tool_result["is_error"] is False
    # the call after the subagent finished: the reminder is a new user turn after the model's reply
    resumed = api.requests[2]["messages"]
    assert resumed[-2]["role"] == "assistant"
    assert resumed[-1]["role"] == "user" and len(resumed[-1]["content"]) == 1
    [(index, reminder)] = reminders_in(api.requests[2])
    assert index == len(resumed) - 1
    assert f"[task {task_id}] completed: found 3 TODOs for: list TODO comments" in reminder
    # the next call carries it once more only as history, at the same place
    assert reminders_in(api.requests[3]) == [(index, reminder)]
    assert api.requests[3]["messages"][-1] == {"role": "user", "content": "Thanks!"}
    assert [tool["name"] for tool in api.requests[0]["tools"]] == ["task", "task_status", "list_tasks", "cancel_task", "send_message"]
    assert api.requests[0]["tools"][0]["input_schema"]["required"] == ["description", "prompt"]
    assert not store.has_pending_notifications()


async def test_trio_loop_delivers_the_subagent_result_once(store: BackgroundStore) -> None:
    api, _ = await spawn_then_resume_scenario(store)
    assert_spawn_then_resume(api, store)


def test_asyncio_loop_delivers_the_subagent_result_once(store: BackgroundStore) -> None:
    api, _ = asyncio.run(spawn_then_resume_scenario(store))
    assert_spawn_then_resume(api, store)


async def test_reminder_joins_the_tool_result_turn_after_the_results(store: BackgroundStore) -> None:
    release = anyio.Event()

    async def asks_status_after_the_subagent_finished(body: Body) -> Body:
        release.set()
        await store.wait_for_notification()  # the subagent finishes while the model "thinks"
        return tool_use_reply(("toolu_2", "task_status", {"task_id": started_task_id(body)}))

    api = ScriptedMessagesAPI(
        [
            lambda body: tool_use_reply(START_SCAN),
            asks_status_after_the_subagent_finished,
            lambda body: text_reply("The scan found 3 TODOs."),
        ]
    )
    messages: list[MessageParam] = [{"role": "user", "content": "Scan for TODOs."}]
    async with api.client() as client, SubagentPool(store) as pool:
        await run_agent(client, store, task_tools(pool, scan_subagent(release)), messages)

    assert reminder_counts(api) == [0, 0, 1]
    last_turn = api.requests[2]["messages"][-1]
    assert last_turn["role"] == "user"
    tool_result, reminder = last_turn["content"]
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == "toolu_2"
    assert "completed after" in tool_result["content"] and ":\nfound 3 TODOs" in tool_result["content"]
    assert reminder["type"] == "text" and reminder["text"].startswith("<system-reminder>")
    assert "found 3 TODOs for: list TODO comments" in reminder["text"]
    assert len(api.requests[2]["messages"]) == len(messages) - 1  # the final reply is the only addition


async def failed_call_scenario(store: BackgroundStore, failure: Step) -> ScriptedMessagesAPI:
    """The call right after the drain fails; the caller runs its loop again on the list it kept."""
    release = anyio.Event()

    def ends_turn_while_subagent_runs(body: Body) -> Body:
        release.set()
        return text_reply("Started the scan.")

    api = ScriptedMessagesAPI(
        [
            lambda body: tool_use_reply(START_SCAN),
            ends_turn_while_subagent_runs,
            failure,
            lambda body: text_reply("The scan found 3 TODOs."),
        ]
    )
    messages: list[MessageParam] = [{"role": "user", "content": "Scan for TODOs."}]
    async with api.client() as client, SubagentPool(store) as pool:
        tools = task_tools(pool, scan_subagent(release))
        with pytest.raises((anthropic.InternalServerError, anthropic.APIConnectionError)):
            await run_agent(client, store, tools, messages)
        # the failed call carried the reminder, but the list the caller keeps does not
        assert len(reminders_in(api.requests[2])) == 1
        assert len(messages) == 4 and messages[-1]["role"] == "assistant"
        assert "<system-reminder>\\n" not in repr(messages)  # the tag alone is in the task tool's result
        assert store.pending_count() == 1
        await run_agent(client, store, tools, messages)
    assert reminder_counts(api) == [0, 0, 1, 1]
    assert reminders_in(api.requests[3]) == reminders_in(api.requests[2])
    assert repr(messages).count("<system-reminder>\\n") == 1  # the task tool's result names the tag too
    assert not store.has_pending_notifications()
    return api


@pytest.mark.parametrize("failure", [server_error, connection_reset], ids=["500", "connection-error"])
async def test_trio_failed_call_after_the_drain_delivers_on_the_next_call_once(
    store: BackgroundStore, failure: Step
) -> None:
    await failed_call_scenario(store, failure)


def test_asyncio_failed_call_after_the_drain_delivers_on_the_next_call_once(store: BackgroundStore) -> None:
    asyncio.run(failed_call_scenario(store, server_error))


async def test_cancelled_call_takes_the_reminder_out_and_keeps_it_pending(store: BackgroundStore) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    cancel_scope = anyio.CancelScope()

    async def hangs_until_cancelled(body: Body) -> Body:
        cancel_scope.cancel()
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    api = ScriptedMessagesAPI([hangs_until_cancelled, lambda body: text_reply("Lint is clean.")])
    messages: list[MessageParam] = [{"role": "user", "content": "Anything new?"}]
    async with api.client() as client:
        with cancel_scope:
            await run_agent(client, store, [], messages)
        assert cancel_scope.cancelled_caught
        assert messages == [{"role": "user", "content": "Anything new?"}]
        assert store.pending_count() == 1
        await run_agent(client, store, [], messages)
    assert reminder_counts(api) == [1, 1]
    assert reminders_in(api.requests[1]) == reminders_in(api.requests[0])
    assert not store.has_pending_notifications()


# -- create_with_followups ------------------------------------------------------------------


async def test_create_with_followups_keeps_the_reminder_on_success_and_restores_on_failure(
    store: BackgroundStore,
) -> None:
    api = ScriptedMessagesAPI([lambda body: text_reply("Noted."), server_error])
    messages: list[MessageParam] = [{"role": "user", "content": "What finished?"}]
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    async with api.client() as client:
        reply = await create_with_followups(client, store, messages=messages, model=MODEL, max_tokens=64)
        assert reply.content[0].type == "text" and reply.content[0].text == "Noted."
        sent = api.requests[0]["messages"]
        assert sent[0]["content"][0] == {"type": "text", "text": "What finished?"}
        assert "[task lint] completed: no problems" in sent[0]["content"][1]["text"]
        assert messages == sent  # the caller's history keeps what the model saw
        assert not store.has_pending_notifications()

        messages.append(reply.to_param())
        kept = list(messages)
        store.insert("tests")
        store.notify("tests", TaskState.failed("AssertionError: 1 != 2"))
        with pytest.raises(anthropic.InternalServerError):
            await create_with_followups(client, store, messages=messages, model=MODEL, max_tokens=64)
        assert "[task tests] failed" in reminders_in(api.requests[1])[-1][1]
        assert messages == kept
        assert [notification.id for notification in store.drain_notifications()] == ["tests"]


async def test_create_with_followups_refuses_to_stream_before_draining(store: BackgroundStore) -> None:
    api = ScriptedMessagesAPI([])
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    messages: list[MessageParam] = [{"role": "user", "content": "hi"}]
    async with api.client() as client:
        with pytest.raises(ValueError, match="does not stream"):
            await create_with_followups(client, store, messages=messages, model=MODEL, max_tokens=64, stream=True)
    assert api.requests == [] and store.pending_count() == 1
    assert messages == [{"role": "user", "content": "hi"}]


# -- placement ------------------------------------------------------------------------------


def test_after_an_assistant_turn_the_reminder_is_a_new_user_turn() -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    placement = add_reminder(messages, "<system-reminder>x</system-reminder>")
    assert messages[-1] == {"role": "user", "content": [reminder_block("<system-reminder>x</system-reminder>")]}
    assert placement.remove() is True
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert placement.remove() is False


@pytest.mark.parametrize(
    "last", [None, {"role": "system", "content": "Be brief."}], ids=["empty-list", "system-message-last"]
)
def test_without_a_trailing_user_turn_a_user_turn_is_appended(last: MessageParam | None) -> None:
    messages: list[MessageParam] = [] if last is None else [last]
    add_reminder(messages, "R")
    assert messages[-1] == {"role": "user", "content": [{"type": "text", "text": "R"}]}
    assert len(messages) == (1 if last is None else 2)


def test_a_plain_prompt_turn_gets_the_reminder_after_the_prompt_and_is_restored_as_it_was() -> None:
    prompt: MessageParam = {"role": "user", "content": "Fix the bug."}
    messages: list[MessageParam] = [prompt]
    placement = add_reminder(messages, "R")
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "Fix the bug."}, reminder_block("R")]}]
    assert prompt == {"role": "user", "content": "Fix the bug."}  # the caller's message is not modified
    placement.remove()
    assert messages[0] is prompt


def test_an_empty_prompt_is_not_sent_as_an_empty_text_block() -> None:
    messages: list[MessageParam] = [{"role": "user", "content": ""}]
    add_reminder(messages, "R")
    assert messages == [{"role": "user", "content": [reminder_block("R")]}]


def test_tool_results_stay_first_and_the_callers_blocks_are_untouched() -> None:
    results: list[Any] = [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "a"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "b"},
    ]
    turn: MessageParam = {"role": "user", "content": results}
    messages: list[MessageParam] = [{"role": "assistant", "content": "calling tools"}, turn]
    placement = add_reminder(messages, "R")
    carried: Any = messages[-1]["content"]
    assert [block["type"] for block in carried] == ["tool_result", "tool_result", "text"]
    assert len(results) == 2 and turn["content"] is results
    placement.remove()
    assert messages[-1] is turn


def test_one_shot_content_is_read_once_and_restored_as_a_list() -> None:
    def blocks() -> Iterator[Any]:
        yield {"type": "text", "text": "look at this"}

    messages: list[MessageParam] = [{"role": "user", "content": blocks()}]
    placement = add_reminder(messages, "R")
    assert messages[0]["content"] == [{"type": "text", "text": "look at this"}, reminder_block("R")]
    placement.remove()
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "look at this"}]}]


def test_removal_finds_the_turn_after_the_list_grew() -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "hi"}]
    placement = add_reminder(messages, "R")
    messages.append({"role": "assistant", "content": "reply"})
    assert isinstance(placement, ReminderPlacement) and placement.remove()
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "reply"}]


@pytest.mark.parametrize(
    "last", ["just text", {"content": "no role"}, {"role": "user"}], ids=["not-a-dict", "no-role", "no-content"]
)
def test_a_malformed_last_message_is_refused_and_nothing_is_lost(store: BackgroundStore, last: Any) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    messages: list[Any] = [last]
    with pytest.raises(TypeError, match="last"):
        reminder_for_call(store, messages)
    assert messages == [last]
    assert store.pending_count() == 1


def test_nothing_pending_leaves_the_messages_alone(store: BackgroundStore) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "hi"}]
    with reminder_for_call(store, messages) as call:
        assert call.text is None and call.task_ids == ()
    assert messages == [{"role": "user", "content": "hi"}]
    assert call.give_back() == 0


def test_give_back_after_confirm_changes_nothing(store: BackgroundStore) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    messages: list[MessageParam] = [{"role": "user", "content": "hi"}]
    call = reminder_for_call(store, messages)
    assert call.task_ids == ("lint",)
    call.confirm()
    assert call.give_back() == 0
    carried: Any = messages[0]["content"]
    assert len(carried) == 2 and not store.has_pending_notifications()


# -- tools ----------------------------------------------------------------------------------


class EchoArgs(BaseModel):
    text: str


def tool_use_message(*uses: tuple[str, str, Body]) -> Message:
    return Message.model_validate(tool_use_reply(*uses))


async def test_tool_uses_become_tool_results_in_call_order_with_errors_for_the_model() -> None:
    order: list[str] = []

    async def slow_echo(args: EchoArgs) -> str:
        order.append(f"slow {args.text} start")
        await anyio.lowlevel.checkpoint()
        order.append(f"slow {args.text} end")
        return args.text.upper()

    def echo(args: EchoArgs) -> ToolOutcome:
        order.append(f"echo {args.text}")
        return ToolOutcome(args.text)

    def broken(args: EchoArgs) -> str:
        raise RuntimeError("disk full")

    tools = [
        Tool("slow_echo", "Echo, slowly.", EchoArgs, slow_echo),
        Tool("echo", "Echo.", EchoArgs, echo),
        Tool("broken", "Always fails.", EchoArgs, broken),
    ]
    results = await run_tool_uses(
        tools,
        tool_use_message(
            ("t1", "slow_echo", {"text": "a"}),
            ("t2", "echo", {"text": "b"}),
            ("t3", "nope", {}),
            ("t4", "echo", {"txt": "c"}),
            ("t5", "broken", {"text": "d"}),
        ),
    )
    assert [(result["tool_use_id"], result["is_error"]) for result in results] == [
        ("t1", False),
        ("t2", False),
        ("t3", True),
        ("t4", True),
        ("t5", True),
    ]
    assert [result["content"] for result in results[:2]] == ["A", "b"]
    assert results[2]["content"] == "Unknown tool 'nope'; the tools are: slow_echo, echo, broken."
    assert str(results[3]["content"]).startswith("Invalid arguments for echo: text: Field required")
    assert results[4]["content"] == "Tool broken failed: RuntimeError: disk full"
    assert order[-1] == "slow a end" and "echo b" in order  # the async tool did not hold up the calls after it


async def test_tool_params_are_the_task_tools_and_duplicate_names_are_refused(store: BackgroundStore) -> None:
    async with SubagentPool(store) as pool:
        tools = task_tools(pool, scan_subagent(anyio.Event()))
    assert tool_params(tools) == [
        {"name": tool.name, "description": tool.description, "input_schema": tool.parameters.model_json_schema()}
        for tool in tools
    ]
    with pytest.raises(ValueError, match="two tools are named 'task'"):
        await run_tool_uses([*tools, tools[0]], [])


# -- the example -------------------------------------------------------------------------------


def test_example_prints_the_model_input_carrying_the_reminder_once(run_example: Callable[[str], str]) -> None:
    out = run_example("anthropic_messages_agent.py")
    assert "=== model call 3: the input that carries the reminder ===" in out
    model_input = out.split("=== model call 3: the input that carries the reminder ===\n", 1)[1]
    model_input = model_input.split("\n===", 1)[0]
    assert model_input.count('"text": "<system-reminder>') == 1
    assert re.search(r"\[task [0-9a-f]{8}\] completed: 3 TODO comments", model_input)
    assert "reminder blocks per model call: [0, 0, 1, 1]" in out


# -- the library's loop: idle wake-up, sessions, the sync path --------------------------------


async def test_run_agent_loop_continues_by_itself_when_a_result_arrives_after_the_final_answer(
    store: BackgroundStore,
) -> None:
    release = anyio.Event()

    def ends_turn_while_subagent_runs(body: Body) -> Body:
        release.set()
        return text_reply("The scan runs in the background.")

    api = ScriptedMessagesAPI(
        [lambda body: tool_use_reply(START_SCAN), ends_turn_while_subagent_runs, lambda body: text_reply("3 TODOs.")]
    )
    messages: list[MessageParam] = [{"role": "user", "content": "Scan for TODOs."}]
    with anyio.fail_after(30):
        async with api.client() as client, SubagentPool(store) as pool:
            final = await run_agent_loop(
                client, store, messages=messages, tools=task_tools(pool, scan_subagent(release)),
                model=MODEL, max_tokens=1024, system=SYSTEM,
            )
    assert final.content[0].text == "3 TODOs."  # type: ignore[union-attr]
    assert reminder_counts(api) == [0, 0, 1]
    [(index, reminder)] = reminders_in(api.requests[2])
    assert index == len(api.requests[2]["messages"]) - 1 and "found 3 TODOs" in reminder
    assert sum("found 3 TODOs" in json.dumps(message, default=str) for message in messages) == 1
    assert not store.has_pending_notifications() and store.leases() == []


async def test_run_agent_loop_without_idle_wake_up_returns_and_leaves_the_result_pending(store: BackgroundStore) -> None:
    release = anyio.Event()

    def ends_turn(body: Body) -> Body:
        release.set()
        return text_reply("Running.")

    for options in ({"resume_when_idle": False}, {"max_idle_resumes": 0}):
        api = ScriptedMessagesAPI([lambda body: tool_use_reply(START_SCAN), ends_turn])
        async with api.client() as client, SubagentPool(store, close="wait") as pool:
            final = await run_agent_loop(
                client, store, messages=[{"role": "user", "content": "Scan."}],
                tools=task_tools(pool, scan_subagent(release)), model=MODEL, max_tokens=64, **options,
            )
            assert final.content[0].text == "Running."  # type: ignore[union-attr]
        assert store.pending_count() == 1
        store.drain_notifications()
        release = anyio.Event()


async def test_two_conversations_on_one_store_stay_apart(store: BackgroundStore) -> None:
    for name in ("alice", "bob"):
        store.session(name).insert(f"{name}-job")
        store.session(name).notify(f"{name}-job", TaskState.completed(f"{name}'s result"))
    for name, other in (("alice", "bob"), ("bob", "alice")):
        api = ScriptedMessagesAPI([lambda body: text_reply("Noted.")])
        async with api.client() as client:
            await run_agent_loop(
                client, store, session=name, messages=[{"role": "user", "content": "hi"}], model=MODEL, max_tokens=64
            )
        [(_, reminder)] = reminders_in(api.requests[0])
        assert f"{name}'s result" in reminder and other not in reminder
        assert not store.session(name).has_pending_notifications()


class SyncMessagesAPI(ScriptedMessagesAPI):
    """:class:`ScriptedMessagesAPI` for the synchronous ``anthropic.Anthropic`` client."""

    def handle_sync(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if len(self.requests) > len(self.steps):
            raise AssertionError(f"unexpected model call #{len(self.requests)}")
        reply = self.steps[len(self.requests) - 1](body)
        assert not inspect.isawaitable(reply)
        return reply if isinstance(reply, httpx2.Response) else httpx2.Response(200, json=reply)

    def sync_client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="test", http_client=httpx2.Client(transport=httpx2.MockTransport(self.handle_sync)), max_retries=0
        )


def test_the_sync_loop_on_a_blocking_pool_spawns_waits_and_delivers_once(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return f"found 3 TODOs for: {request.prompt}"

    def ends_turn_while_subagent_runs(body: Body) -> Body:
        release.set()
        return text_reply("The scan runs in the background.")

    api = SyncMessagesAPI(
        [lambda body: tool_use_reply(START_SCAN), ends_turn_while_subagent_runs, lambda body: text_reply("3 TODOs.")]
    )
    messages: list[MessageParam] = [{"role": "user", "content": "Scan for TODOs."}]
    with BlockingPool(store) as pool, api.sync_client() as client:
        final = run_agent_loop_sync(
            client, store, pool=pool, messages=messages, tools=task_tools(pool.pool, subagent), model=MODEL, max_tokens=64
        )
    assert final.content[0].text == "3 TODOs."  # type: ignore[union-attr]
    assert reminder_counts(api) == [0, 0, 1]
    assert not store.has_pending_notifications()


def test_sync_tool_uses_run_async_handlers_on_the_pool_and_refuse_them_without_one(store: BackgroundStore) -> None:
    class Args(BaseModel):
        text: str

    async def shout(args: Args) -> ToolOutcome:
        await anyio.sleep(0)
        return ToolOutcome(args.text.upper())

    tools = [Tool("shout", "Shout.", Args, shout)]
    response = Message.model_validate(tool_use_reply(("toolu_1", "shout", {"text": "hi"}), ("toolu_2", "nope", {})))
    without = run_tool_uses_sync(tools, response)
    assert without[0]["is_error"] and "no BlockingPool" in str(without[0]["content"])
    with BlockingPool(store) as pool:
        results = run_tool_uses_sync(tools, response, pool=pool)
    assert [(r["content"], r["is_error"]) for r in results] == [
        ("HI", False),
        ("Unknown tool 'nope'; the tools are: shout.", True),
    ]


def test_an_httpx_client_is_refused_by_anthropic_2(store: BackgroundStore) -> None:
    httpx = pytest.importorskip("httpx")
    with pytest.raises(TypeError, match="httpx2"):
        AsyncAnthropic(api_key="test", http_client=httpx.AsyncClient())


# -- a history saved by a process that died holding the lease --------------------------------


def finish(store: BackgroundStore, task_id: str, text: str) -> None:
    store.insert(task_id)
    store.notify(task_id, TaskState.completed(text))


async def test_messages_saved_by_a_process_that_died_holding_the_lease_are_not_sent_the_reminder_again(
    relay_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    api = ScriptedMessagesAPI([lambda body: text_reply("Noted."), lambda body: text_reply("Nothing new.")])
    messages: list[MessageParam] = [{"role": "user", "content": "What finished?"}]
    finish(store, "lint", "no problems")
    async with api.client() as client:
        # the call succeeds and the list is saved, but the process dies before it confirms
        monkeypatch.setattr(ReminderDelivery, "_settle", lambda self: False)
        reply = await create_with_followups(client, store, messages=messages, model=MODEL, max_tokens=64)
        monkeypatch.undo()
        answer = {"role": "assistant", "content": [block.model_dump(mode="json") for block in reply.content]}
        saved = json.loads(json.dumps([*messages, answer]))  # as a file would give it back
        clock.advance(31)  # its lease expired: the notification is pending again
        assert store.pending_count() == 1
        saved.append({"role": "user", "content": "Anything else?"})
        await create_with_followups(client, store, messages=saved, model=MODEL, max_tokens=64)
    assert reminder_counts(api) == [1, 1]  # the saved reminder, never a second copy
    assert reminders_in(api.requests[1]) == reminders_in(api.requests[0])
    assert store.pending_count() == 0 and store.leases() == []
    assert not store.reminder_labels.has_any(store.id)


async def test_a_reminder_lost_with_the_process_is_delivered_after_its_lease_expires_even_if_an_equal_one_is_kept(
    relay_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    messages: list[MessageParam] = [{"role": "user", "content": "What finished?"}]
    finish(store, "lint", "no problems")
    with reminder_for_call(store, messages):
        pass  # delivered and confirmed: the history keeps it
    kept = [*messages, {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Again?"}]
    finish(store, "lint", "no problems")  # the same report again, under a new notification id
    monkeypatch.setattr(ReminderDelivery, "_settle", lambda self: False)
    lost = list(kept)
    reminder_for_call(store, lost)  # taken and placed, then the process (and `lost`) is gone
    monkeypatch.undo()
    clock.advance(31)
    retry = list(kept)
    call = reminder_for_call(store, retry)
    assert call.text is not None and call.text == reminders_in({"messages": retry})[0][1]
    assert len(reminders_in({"messages": retry})) == 2  # the kept one, and the lost one delivered anew
    call.confirm()
    assert store.pending_count() == 0 and store.leases() == []


def test_a_reminder_the_next_call_finds_in_the_messages_stays_there_when_its_holder_gives_it_back(
    store: BackgroundStore,
) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "What finished?"}]
    finish(store, "lint", "no problems")
    first = reminder_for_call(store, messages)  # settled by hand, later
    assert first.text is not None
    messages.append({"role": "assistant", "content": "Noted."})
    messages.append({"role": "user", "content": "And now?"})
    second = reminder_for_call(store, messages)  # the list carries the first reminder: it is confirmed
    assert second.delivery is None
    assert first.give_back() == 0  # too late: the history has it, so it stays
    assert [text for _, text in reminders_in({"messages": messages})] == [first.text]
    assert store.pending_count() == 0 and store.leases() == []
