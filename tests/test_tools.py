from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from followups import BackgroundStore, FollowupSettings, SubagentPool
from followups.tools import CancelTaskArgs, TaskArgs, TaskRequest, TaskStatusArgs, Tool, ToolOutcome, task_tools


@pytest.fixture
def store(tmp_path: Path) -> BackgroundStore:
    return BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay", capacity=8, max_concurrent=1))


class Subagents:
    def __init__(self) -> None:
        self.release = trio.Event()

    async def __call__(self, request: TaskRequest) -> str:
        if request.description == "big":
            return "line\n" * 5000
        await self.release.wait()
        return f"result of {request.description}"


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools}


def call(tool: Tool, **arguments: Any) -> ToolOutcome:
    parsed = tool.parse(arguments)
    assert not isinstance(parsed, ToolOutcome), parsed
    outcome = tool.handler(parsed)
    assert isinstance(outcome, ToolOutcome)
    return outcome


def task_id_of(outcome: ToolOutcome) -> str:
    return outcome.content.split()[3]


async def one_running_one_queued(tools: dict[str, Tool]) -> tuple[str, str]:
    """With a cap of one: start "first" (runs) and "second" (queued); return their ids."""
    running = task_id_of(call(tools["task"], description="first", prompt="p"))
    queued = task_id_of(call(tools["task"], description="second", prompt="p"))
    await trio.testing.wait_all_tasks_blocked()
    return running, queued


async def test_task_acknowledges_with_the_id_and_says_not_to_poll(store: BackgroundStore) -> None:
    subagents = Subagents()
    async with SubagentPool(store) as pool:
        tools = by_name(task_tools(pool, subagents))
        ack = call(tools["task"], description="index the repo", prompt="go")
        task_id = task_id_of(ack)
        assert not ack.is_error
        assert store.get(task_id) is not None
        assert "(index the repo)" in ack.content
        assert "arrive automatically in a <system-reminder>" in ack.content
        assert "Do not poll" in ack.content
        subagents.release.set()


async def test_task_at_the_cap_returns_the_refusal_as_an_error_result(store: BackgroundStore) -> None:
    subagents = Subagents()
    async with SubagentPool(store) as pool:
        tools = by_name(task_tools(pool, subagents))
        call(tools["task"], description="one", prompt="p")
        refusal = call(tools["task"], description="two", prompt="p")
        assert refusal.is_error
        assert "1 of 1 subagent slots are in use" in refusal.content
        assert "Do not retry in a loop" in refusal.content
        subagents.release.set()


async def test_task_status_describes_each_stage(store: BackgroundStore) -> None:
    subagents = Subagents()
    async with SubagentPool(store, when_full="queue") as pool:
        tools = by_name(task_tools(pool, subagents))
        running, queued = await one_running_one_queued(tools)
        status = tools["task_status"]
        assert "is still running" in call(status, task_id=running).content
        assert "is queued, waiting for a free subagent slot" in call(status, task_id=queued).content
        subagents.release.set()
        await trio.testing.wait_all_tasks_blocked()
        finished = call(status, task_id=running).content
        assert re.fullmatch(rf"Task {running} \(first\) completed after \d+\.\d s:\nresult of first", finished)
        unknown = call(status, task_id="nope")
        assert unknown.is_error and "never existed" in unknown.content and "evicted" in unknown.content


async def test_task_status_shows_the_relayed_preview_not_the_whole_output(store: BackgroundStore) -> None:
    async with SubagentPool(store) as pool:
        tools = by_name(task_tools(pool, Subagents()))
        big = task_id_of(call(tools["task"], description="big", prompt="p"))
        assert await store.wait_for_notification() is True
        text = call(tools["task_status"], task_id=big).content
    assert "lines elided" in text and "`read`" in text
    assert len(text.encode()) < store.settings.relay_inline_max_bytes + 200


async def test_cancel_task_texts(store: BackgroundStore) -> None:
    subagents = Subagents()
    async with SubagentPool(store, when_full="queue") as pool:
        tools = by_name(task_tools(pool, subagents))
        running, queued = await one_running_one_queued(tools)
        cancel = tools["cancel_task"]
        assert call(cancel, task_id=queued).content == f"Task {queued} was cancelled before it started."
        assert "is being cancelled" in call(cancel, task_id=running).content
        await trio.testing.wait_all_tasks_blocked()
        assert "is not running (current status: cancelled); there is nothing to cancel" in call(cancel, task_id=running).content
        assert call(cancel, task_id="ghost").is_error


def test_tool_specs_carry_json_schemas() -> None:
    assert TaskArgs.model_json_schema()["required"] == ["description", "prompt"]
    assert TaskStatusArgs.model_json_schema()["required"] == ["task_id"]
    assert CancelTaskArgs.model_json_schema()["required"] == ["task_id"]


async def test_invalid_arguments_name_the_field(store: BackgroundStore) -> None:
    async with SubagentPool(store) as pool:
        tools = by_name(task_tools(pool, Subagents()))
        outcome = tools["task"].parse({"description": ""})
        assert isinstance(outcome, ToolOutcome) and outcome.is_error
        assert "description" in outcome.content and "prompt" in outcome.content
        assert tools["task"].spec()["input_schema"]["properties"].keys() == {"description", "prompt", "name"}


class EchoArgs(TaskStatusArgs):
    pass


def echo_tool(handler: object) -> Tool:
    return Tool("echo", "Echo the task id.", EchoArgs, handler)  # type: ignore[arg-type]


async def test_invoke_validates_runs_and_maps_failures_to_error_outcomes() -> None:
    async def async_echo(args: EchoArgs) -> str:
        await trio.lowlevel.checkpoint()
        return f"async {args.task_id}"

    def broken(args: EchoArgs) -> str:
        raise KeyError("no such thing")

    assert await echo_tool(lambda args: f"sync {args.task_id}").invoke({"task_id": "t1"}) == ToolOutcome("sync t1")
    assert await echo_tool(async_echo).invoke({"task_id": "t2"}) == ToolOutcome("async t2")
    invalid = await echo_tool(async_echo).invoke({})
    assert invalid.is_error and "Invalid arguments for echo: task_id: Field required" in invalid.content
    failed = await echo_tool(broken).invoke({"task_id": "t3"})
    assert failed == ToolOutcome("Tool echo failed: KeyError: 'no such thing'", is_error=True)


def test_invoke_sync_runs_sync_handlers_and_refuses_async_ones() -> None:
    async def async_echo(args: EchoArgs) -> str:
        return args.task_id

    assert echo_tool(lambda args: ToolOutcome(args.task_id, is_error=True)).invoke_sync({"task_id": "x"}) == (
        ToolOutcome("x", is_error=True)
    )
    assert echo_tool(lambda args: args.task_id).invoke_sync({"task_id": ""}).is_error
    with pytest.raises(TypeError, match="has an async handler"):
        echo_tool(async_echo).invoke_sync({"task_id": "x"})


async def test_invoke_lets_cancellation_through() -> None:
    started = trio.Event()

    async def hangs(args: EchoArgs) -> str:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    outcomes: list[ToolOutcome] = []

    async def invoke() -> None:
        outcomes.append(await echo_tool(hangs).invoke({"task_id": "x"}))

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(invoke)
            await started.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert outcomes == [], "a cancelled tool call must not turn into an outcome"


async def test_task_can_be_named_and_every_tool_takes_the_name(store: BackgroundStore) -> None:
    subagents = Subagents()
    async with SubagentPool(store) as pool:
        tools = by_name(task_tools(pool, subagents))
        ack = call(tools["task"], description="index", prompt="p", name="indexer")
        assert "named 'indexer'" in ack.content
        assert "Task " in call(tools["task_status"], task_id="indexer").content
        duplicate = call(tools["task"], description="again", prompt="p", name="indexer")
        await trio.testing.wait_all_tasks_blocked()
        assert "is being cancelled" in call(tools["cancel_task"], task_id="indexer").content
    assert duplicate.is_error and "already used by live task" in duplicate.content


async def test_task_status_shows_progress_and_the_tasks_it_started(store: BackgroundStore) -> None:
    release = trio.Event()

    async def parent(request: TaskRequest, ctx: Any) -> str:
        ctx.report_progress("scanned 3 of 9 modules")
        pool.spawn(child)
        await release.wait()
        return "ok"

    async def child() -> str:
        await release.wait()
        return "child ok"

    async with SubagentPool(store, max_concurrent=4) as pool:
        tools = by_name(task_tools(pool, parent))
        task_id = task_id_of(call(tools["task"], description="scan", prompt="p"))
        await trio.testing.wait_all_tasks_blocked()
        status = call(tools["task_status"], task_id=task_id).content
        listing = call(tools["list_tasks"]).content
        release.set()
    assert "is still running (for" in status
    assert "Last progress," in status and "scanned 3 of 9 modules" in status
    assert "Tasks it started: " in status and "(running)" in status
    assert listing.splitlines()[0].startswith(f"- {task_id} [subagent] running (scan): scanned 3 of 9 modules")


async def test_cancel_task_with_tree_also_cancels_what_the_task_started(store: BackgroundStore) -> None:
    async def parent(request: TaskRequest) -> str:
        pool.spawn(forever_child)
        await trio.sleep_forever()
        return "never"

    async def forever_child() -> str:
        await trio.sleep_forever()
        return "never"

    async with SubagentPool(store, max_concurrent=4) as pool:
        tools = by_name(task_tools(pool, parent))
        task_id = task_id_of(call(tools["task"], description="scan", prompt="p"))
        await trio.testing.wait_all_tasks_blocked()
        text = call(tools["cancel_task"], task_id=task_id, tree=True).content
    assert "is being cancelled" in text and "Also cancelling 1 task(s) it started" in text


async def test_send_message_reaches_the_task_or_says_why_not(store: BackgroundStore) -> None:
    async def listener(request: TaskRequest, ctx: Any) -> str:
        return f"heard {await ctx.inbox.receive()}"

    async with SubagentPool(store, close="wait") as pool:
        tools = by_name(task_tools(pool, listener))
        task_id = task_id_of(call(tools["task"], description="listen", prompt="p"))
        await trio.testing.wait_all_tasks_blocked()
        sent = call(tools["send_message"], task_id=task_id, message="hello")
        unknown = call(tools["send_message"], task_id="ghost", message="hello")
    assert not sent.is_error and "Message delivered" in sent.content
    assert unknown.is_error and "never existed" in unknown.content
    finished = call(tools["send_message"], task_id=task_id, message="again")
    assert finished.is_error and "is not running (current status: completed)" in finished.content
    assert store.get(task_id).state.text == "heard hello"  # type: ignore[union-attr]
