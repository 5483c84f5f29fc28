from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.testing

from followups import BackgroundStore, FollowupPlugin, FollowupSettings, SubagentPool, TaskState, UserMessage
from followups.loop import (
    AgentLoop,
    AssistantMessage,
    LoopLimitExceeded,
    Message,
    ScriptedModel,
    ScriptExhausted,
    ToolCall,
    ToolResultMessage,
    tool_call,
)
from followups.tools import TaskRequest, Tool, task_tools
from pydantic import BaseModel


class EchoArgs(BaseModel):
    text: str


def echo_tool() -> Tool:
    return Tool("echo", "Echo the text.", EchoArgs, lambda args: f"echo: {args.text}")


def reminders_in(messages: Sequence[Message]) -> list[str]:
    return [m.content for m in messages if isinstance(m, UserMessage) and "<system-reminder>" in m.content]


async def test_loop_runs_tools_until_the_model_ends_its_turn() -> None:
    model = ScriptedModel([AssistantMessage(tool_calls=[tool_call("echo", text="hi")]), "all done"])
    loop = AgentLoop(model, [echo_tool()])
    final = await loop.run("go")
    assert final.content == "all done"
    results = [m for m in loop.messages if isinstance(m, ToolResultMessage)]
    assert [r.content for r in results] == ["echo: hi"]
    assert model.inputs[1][-1] == results[0]


async def test_tool_errors_and_bad_calls_become_error_results_not_crashes() -> None:
    def explode(args: EchoArgs) -> str:
        raise RuntimeError("tool broke")

    tools = [Tool("explode", "x", EchoArgs, explode), echo_tool()]
    model = ScriptedModel(
        [
            AssistantMessage(
                tool_calls=[tool_call("explode", text="a"), tool_call("missing"), tool_call("echo", wrong=1)]
            ),
            "ok",
        ]
    )
    loop = AgentLoop(model, tools)
    await loop.run("go")
    results = [m for m in loop.messages if isinstance(m, ToolResultMessage)]
    assert all(r.is_error for r in results)
    assert "RuntimeError: tool broke" in results[0].content
    assert "Unknown tool 'missing'" in results[1].content
    assert "text: Field required" in results[2].content


async def test_async_tools_run_concurrently_and_results_keep_call_order() -> None:
    both_started = trio.Event()
    started = 0

    async def slow(args: EchoArgs) -> str:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()
        return args.text

    model = ScriptedModel(
        [AssistantMessage(tool_calls=[tool_call("slow", text="first"), tool_call("slow", text="second")]), "done"]
    )
    loop = AgentLoop(model, [Tool("slow", "x", EchoArgs, slow)])
    with trio.fail_after(5):
        await loop.run("go")
    assert [m.content for m in loop.messages if isinstance(m, ToolResultMessage)] == ["first", "second"]


async def test_hooks_transform_block_replace_steer_and_stop() -> None:
    model = ScriptedModel(
        [AssistantMessage(tool_calls=[tool_call("echo", text="blocked?"), tool_call("echo", text="x")]), "STOP now", "unreached"]
    )
    loop = AgentLoop(model, [echo_tool()])
    loop.register_hook("transform_prompt", lambda prompt: prompt.upper())
    loop.register_hook("before_tool_call", lambda call: "not allowed" if call.arguments["text"] == "blocked?" else None)

    async def after(call: ToolCall, result: ToolResultMessage) -> ToolResultMessage | None:
        return result.model_copy(update={"content": result.content + "!"}) if not result.is_error else None

    loop.register_hook("after_tool_call", after)
    loop.register_hook("get_steering_messages", lambda: [UserMessage(content="user typed while tools ran")])
    loop.register_hook("should_stop_after_turn", lambda reply: reply.content.startswith("STOP"))
    final = await loop.run("go")
    assert final.content == "STOP now"
    assert model.inputs[0][0].content == "GO"
    results = [m for m in loop.messages if isinstance(m, ToolResultMessage)]
    assert (results[0].content, results[0].is_error) == ("not allowed", True)
    assert results[1].content == "echo: x!"
    assert model.inputs[1][-1] == UserMessage(content="user typed while tools ran")


def test_unknown_hook_name_is_refused() -> None:
    with pytest.raises(ValueError, match="get_followup_messages"):
        AgentLoop(ScriptedModel([])).register_hook("on_followup", lambda: [])


async def test_a_runaway_model_hits_the_call_limit() -> None:
    model = ScriptedModel([AssistantMessage(tool_calls=[tool_call("echo", text="again")])] * 10)
    with pytest.raises(LoopLimitExceeded):
        await AgentLoop(model, [echo_tool()], max_model_calls=3).run("go")


async def test_an_exhausted_script_says_which_call() -> None:
    with pytest.raises(ScriptExhausted, match="model call 2"):
        await AgentLoop(ScriptedModel([AssistantMessage(tool_calls=[tool_call("echo", text="x")])]), [echo_tool()]).run("go")


# -- with followups ----------------------------------------------------------------------


def make_store(tmp_path: Path) -> BackgroundStore:
    return BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay"))


async def test_a_result_that_lands_during_the_turn_comes_back_as_a_followup_turn(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.insert("t1")

    def finish_during_turn(messages: Sequence[Message]) -> str:
        store.notify("t1", TaskState.completed("background answer"))
        return "turn over"

    model = ScriptedModel([finish_during_turn, "thanks for the result"])
    loop = AgentLoop(model)
    FollowupPlugin(store).register(loop)
    final = await loop.run("go")
    assert final.content == "thanks for the result"
    followup = model.inputs[1][-1]
    assert isinstance(followup, UserMessage)
    assert "[task t1] completed: background answer" in followup.content
    assert len(reminders_in(loop.messages)) == 1


async def test_idle_resume_waits_for_running_subagents_and_continues(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    release = trio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return f"finished {request.description}"

    async with SubagentPool(store) as pool:
        model = ScriptedModel(
            [
                AssistantMessage(tool_calls=[tool_call("task", description="job", prompt="do it")]),
                "waiting for the job",
                "got the job result",
            ]
        )
        loop = AgentLoop(model, task_tools(pool, subagent), idle_resume=pool)
        FollowupPlugin(store).register(loop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run, "start a job")
            await trio.testing.wait_all_tasks_blocked()
            assert len(model.inputs) == 2  # the turn ended, and the loop is asleep, not polling
            release.set()
    assert [m.content for m in loop.messages if isinstance(m, AssistantMessage)][-1] == "got the job result"
    assert "[task" in model.inputs[2][-1].content and "finished job" in model.inputs[2][-1].content


async def test_without_idle_resume_the_result_is_prepended_to_the_next_prompt(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    release = trio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "late result"

    async with SubagentPool(store, close="wait") as pool:
        model = ScriptedModel(
            [AssistantMessage(tool_calls=[tool_call("task", description="job", prompt="p")]), "ok", "answer two"]
        )
        loop = AgentLoop(model, task_tools(pool, subagent))
        plugin = FollowupPlugin(store)
        loop.register_hook("transform_prompt", plugin.transform_prompt)
        await loop.run("first")
        release.set()
        await store.wait_for_notification()
        await loop.run("second prompt")
    prompt = model.inputs[2][-1]
    assert isinstance(prompt, UserMessage)
    assert prompt.content.startswith("<system-reminder>")
    assert "(completed):\nlate result" in prompt.content
    assert prompt.content.endswith("</system-reminder>\n\nsecond prompt")


async def test_parallel_task_calls_in_one_reply_never_exceed_the_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    running = peak = 0
    release = trio.Event()

    async def subagent(request: TaskRequest) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return "ok"

    async with SubagentPool(store, max_concurrent=4) as pool:
        calls = [tool_call("task", description=f"job {i}", prompt="p") for i in range(12)]
        model = ScriptedModel([AssistantMessage(tool_calls=calls), "done"])
        loop = AgentLoop(model, task_tools(pool, subagent))
        await loop.run("fan out")
        await trio.testing.wait_all_tasks_blocked()
        results = [m for m in loop.messages if isinstance(m, ToolResultMessage)]
        assert [r.is_error for r in results] == [False] * 4 + [True] * 8
        assert peak == 4
        release.set()


def test_the_loop_and_hooks_run_under_asyncio(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def subagent(request: TaskRequest) -> str:
        await anyio.lowlevel.checkpoint()
        return "asyncio result"

    async def main() -> list[str]:
        async with SubagentPool(store) as pool:
            model = ScriptedModel(
                [AssistantMessage(tool_calls=[tool_call("task", description="job", prompt="p")]), "wait", "done"]
            )
            loop = AgentLoop(model, task_tools(pool, subagent), idle_resume=pool)
            FollowupPlugin(store).register(loop)
            await loop.run("go")
            return reminders_in(loop.messages)

    reminders = anyio.run(main, backend="asyncio")
    assert len(reminders) == 1 and "asyncio result" in reminders[0]
