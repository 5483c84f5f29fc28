"""The pydantic-ai adapter, in real pydantic-ai agent runs driven offline by ``FunctionModel``.

pydantic-ai 2.x runs on asyncio only, so these are plain tests that call ``asyncio.run``; the
``SubagentPool`` is entered inside that coroutine, on the agent's loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import (  # noqa: E402
    Agent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelRetry,
    RunContext,
    TextContent,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
    capture_run_messages,
)
from pydantic_ai.exceptions import UsageLimitExceeded  # noqa: E402
from pydantic_ai.capabilities import AbstractCapability  # noqa: E402
from pydantic_ai.models import ModelRequestContext  # noqa: E402
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel  # noqa: E402
from pydantic_ai.usage import UsageLimits  # noqa: E402

from followups import BackgroundStore, BlockingPool, FollowupSettings, SubagentPool, TaskRequest, TaskState  # noqa: E402
from followups.delivery import take_followup  # noqa: E402
from helpers import FakeClock  # noqa: E402
from followups.adapters.pydantic_ai import FollowupReminders, is_reminder_part, prompt_text, task_toolset  # noqa: E402
from followups.tools import task_tools  # noqa: E402

REMINDER_START = "<system-reminder>"

ModelStep = Callable[[list[ModelMessage], AgentInfo], Awaitable[ModelResponse]]


class ScriptedFunction:
    """The ``FunctionModel`` function: runs one step per model call and records every call's input."""

    def __init__(self, *steps: ModelStep) -> None:
        self.steps = steps
        self.inputs: list[list[ModelMessage]] = []
        self.infos: list[AgentInfo] = []

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.inputs.append(list(messages))
        self.infos.append(info)
        if len(self.inputs) > len(self.steps):
            raise AssertionError(f"unexpected model call {len(self.inputs)}")
        return await self.steps[len(self.inputs) - 1](messages, info)


def reply(text: str) -> ModelStep:
    async def step(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(text)])

    return step


def call(tool: str, **arguments: Any) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(tool, arguments)])


def reminders_in(messages: list[ModelMessage]) -> list[UserPromptPart]:
    """The reminder parts the model receives: user prompts in requests that open a reminder block."""
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and prompt_text(part).startswith(REMINDER_START)
    ]


def started_task_id(messages: list[ModelMessage]) -> str:
    for message in messages:
        for part in message.parts:
            if isinstance(part, ToolReturnPart) and part.tool_name == "task":
                found = re.search(r"Started background task (\S+) ", str(part.content))
                if found:
                    return found.group(1)
    raise AssertionError("no task was started")


def assert_delivered_once(inputs: list[ModelMessage], task_id: str, output: str) -> UserPromptPart:
    """``inputs`` carries exactly one reminder, a user-role part reporting ``task_id``, never in the instructions."""
    [reminder] = reminders_in(inputs)
    assert f"[task {task_id}] completed: {output}" in prompt_text(reminder)
    for message in inputs:
        if isinstance(message, ModelRequest):
            assert REMINDER_START not in (message.instructions or "")
    return reminder


def test_the_run_waits_for_its_subagent_and_the_next_call_carries_the_reminder_once(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return f"tests pass ({request.prompt})"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="run tests", prompt="pytest -q")

    async def end_turn_and_let_the_subagent_finish(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        return ModelResponse(parts=[TextPart("The tests run in the background.")])

    async def check_status(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task_status", task_id=started_task_id(messages))

    model = ScriptedFunction(spawn, end_turn_and_let_the_subagent_finish, check_status, reply("All tests pass."))

    async def main() -> str:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model), toolsets=[task_toolset(pool, subagent)], capabilities=[FollowupReminders(store)]
            )
            result = await agent.run("Run the tests.")
            task_id = started_task_id(result.all_messages())
            # the reminder stays in the run's history, once
            assert_delivered_once(result.all_messages(), task_id, "tests pass (pytest -q)")
            return result.output

    assert asyncio.run(main()) == "All tests pass."
    task_id = started_task_id(model.inputs[-1])
    assert reminders_in(model.inputs[0]) == reminders_in(model.inputs[1]) == []
    # the model ended its turn while the subagent ran: the run continued with the reminder as its request
    reminder = assert_delivered_once(model.inputs[2], task_id, "tests pass (pytest -q)")
    assert model.inputs[2][-1].parts == [reminder]
    # later calls see it in history, once, and nothing is injected again
    assert reminders_in(model.inputs[3]) == [reminder]
    assert not store.has_pending_notifications()
    assert store.live_count() == 0


def test_a_result_that_arrives_mid_run_rides_in_the_next_request_once(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "3 files changed"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="summarise", prompt="summarise the diff")

    async def work_while_the_subagent_finishes(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        assert await store.wait_for_notification(timeout=10)
        return call("task_status", task_id=started_task_id(messages))

    model = ScriptedFunction(spawn, work_while_the_subagent_finishes, reply("Summarised."), reply("Nothing new."))

    async def main() -> None:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model),
                toolsets=[task_toolset(pool, subagent)],
                capabilities=[FollowupReminders(store, resume_when_idle=False)],
            )
            first = await agent.run("Summarise my diff.")
            assert first.output == "Summarised."
            second = await agent.run("Anything else?", message_history=first.all_messages())
            assert second.output == "Nothing new."
            assert len(reminders_in(second.all_messages())) == 1

    asyncio.run(main())
    task_id = started_task_id(model.inputs[-1])
    assert reminders_in(model.inputs[1]) == []
    reminder = assert_delivered_once(model.inputs[2], task_id, "3 files changed")
    # a user-role part after the tool results of this step (pydantic-ai merges adjacent requests on the wire)
    last_request = model.inputs[2][-1]
    assert isinstance(last_request, ModelRequest)
    assert [type(part) for part in last_request.parts] == [ToolReturnPart, UserPromptPart]
    assert last_request.parts[-1] == reminder
    # a later run continuing from the history sees it there, once, and gets no new reminder
    assert reminders_in(model.inputs[3]) == [reminder]
    assert not store.has_pending_notifications()


def test_a_failed_model_call_puts_the_reminder_back_for_the_next_call(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "lint clean"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="lint", prompt="ruff check")

    async def end_turn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        return ModelResponse(parts=[TextPart("Linting in the background.")])

    async def provider_down(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ConnectionError("provider unavailable")

    model = ScriptedFunction(spawn, end_turn, provider_down, reply("Lint is clean."))

    async def main() -> None:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model), toolsets=[task_toolset(pool, subagent)], capabilities=[FollowupReminders(store)]
            )
            with capture_run_messages() as failed_history, pytest.raises(ConnectionError):
                await agent.run("Lint the project.")
            # the failed request's reminder left the history, and its notification is pending again
            assert reminders_in(failed_history) == []
            assert store.pending_count() == 1
            retried = await agent.run("Try again.", message_history=failed_history)
            assert retried.output == "Lint is clean."

    asyncio.run(main())
    task_id = started_task_id(model.inputs[-1])
    assert_delivered_once(model.inputs[2], task_id, "lint clean")
    assert_delivered_once(model.inputs[3], task_id, "lint clean")
    assert not store.has_pending_notifications()


class FailOnceBeforeTheModel(AbstractCapability[Any]):
    """Raises from ``before_model_request`` on its first request: after the reminder was taken, before the model."""

    def __init__(self) -> None:
        self.failed = False

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        if not self.failed:
            self.failed = True
            raise RuntimeError("request rejected by a later hook")
        return request_context


def test_a_failure_between_the_drain_and_the_model_call_delivers_on_the_next_call(store: BackgroundStore) -> None:
    store.insert("build")
    store.notify("build", TaskState.completed("wheel built"))
    model = ScriptedFunction(reply("The wheel is built."))
    agent = Agent(FunctionModel(model), capabilities=[FollowupReminders(store), FailOnceBeforeTheModel()])

    async def main() -> None:
        with capture_run_messages() as failed_history, pytest.raises(RuntimeError, match="rejected by a later hook"):
            await agent.run("Build it.")
        assert model.inputs == []
        assert reminders_in(failed_history) == []
        assert store.pending_count() == 1
        result = await agent.run("Build it.")
        assert len(reminders_in(result.all_messages())) == 1

    asyncio.run(main())
    assert_delivered_once(model.inputs[0], "build", "wheel built")
    assert not store.has_pending_notifications()


class RetryFirstResponse(AbstractCapability[Any]):
    """Rejects the first model response with ``ModelRetry``: pydantic-ai sends the request again."""

    def __init__(self) -> None:
        self.retried = False

    async def after_model_request(
        self, ctx: RunContext[Any], *, request_context: ModelRequestContext, response: ModelResponse
    ) -> ModelResponse:
        if not self.retried:
            self.retried = True
            raise ModelRetry("answer again")
        return response


def test_a_retried_request_keeps_the_reminder_in_history_without_a_second_copy(store: BackgroundStore) -> None:
    store.insert("docs")
    store.notify("docs", TaskState.completed("docs built"))
    model = ScriptedFunction(reply("first try"), reply("The docs are built."))
    agent = Agent(FunctionModel(model), capabilities=[FollowupReminders(store), RetryFirstResponse()])

    result = asyncio.run(agent.run("Build the docs."))

    assert result.output == "The docs are built."
    first = assert_delivered_once(model.inputs[0], "docs", "docs built")
    assert reminders_in(model.inputs[1]) == [first]
    assert reminders_in(result.all_messages()) == [first]
    assert not store.has_pending_notifications()


def test_a_cancelled_run_gives_the_reminder_back(store: BackgroundStore) -> None:
    store.insert("scan")
    store.notify("scan", TaskState.completed("no secrets found"))
    entered = asyncio.Event()

    async def hang(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    agent = Agent(FunctionModel(ScriptedFunction(hang)), capabilities=[FollowupReminders(store)])

    async def main() -> None:
        run = asyncio.create_task(agent.run("Scan."))
        await entered.wait()
        assert store.pending_count() == 0  # taken for the request in progress
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())
    assert store.pending_count() == 1


def test_a_run_stopped_before_sending_the_waited_for_reminder_gives_it_back(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "coverage 91%"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="coverage", prompt="measure coverage")

    async def end_turn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        return ModelResponse(parts=[TextPart("Measuring.")])

    model = ScriptedFunction(spawn, end_turn)

    async def main() -> None:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model), toolsets=[task_toolset(pool, subagent)], capabilities=[FollowupReminders(store)]
            )
            # the run resumes with the reminder, but the request limit stops it before the model call
            with capture_run_messages() as history, pytest.raises(UsageLimitExceeded):
                await agent.run("Measure coverage.", usage_limits=UsageLimits(request_limit=2))
            assert reminders_in(history) == []

    asyncio.run(main())
    assert len(model.inputs) == 2
    assert store.pending_count() == 1


def test_one_reminder_per_request_when_the_results_exceed_the_budget(relay_dir: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, reminder_budget_chars=256))
    store.insert("alpha")
    store.insert("beta")

    async def finish_both(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        store.notify("alpha", TaskState.completed("a" * 150))
        store.notify("beta", TaskState.completed("b" * 150))
        return ModelResponse(parts=[TextPart("Both are running.")])

    model = ScriptedFunction(finish_both, reply("Got alpha."), reply("Got beta."))
    agent = Agent(FunctionModel(model), capabilities=[FollowupReminders(store)])

    assert asyncio.run(agent.run("Start.")).output == "Got beta."
    [alpha] = reminders_in(model.inputs[1])
    assert "[task alpha] completed" in prompt_text(alpha) and "beta" not in prompt_text(alpha)
    assert reminders_in(model.inputs[2])[0] == alpha
    [beta] = reminders_in(model.inputs[2])[1:]
    assert "[task beta] completed" in prompt_text(beta)
    assert not store.has_pending_notifications()


@pytest.mark.parametrize("options", [{"resume_when_idle": False}, {"idle_timeout": 0.01}])
def test_without_waiting_the_run_ends_and_the_result_waits_for_the_next_run(
    store: BackgroundStore, options: dict[str, Any]
) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "benchmarks done"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="bench", prompt="run the benchmarks")

    model = ScriptedFunction(spawn, reply("Started."), reply("Benchmarks are done."))

    async def main() -> None:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model),
                toolsets=[task_toolset(pool, subagent)],
                capabilities=[FollowupReminders(store, **options)],
            )
            first = await agent.run("Benchmark it.")
            assert first.output == "Started."
            assert store.live_count() == 1
            release.set()
            assert await store.wait_for_notification(timeout=10)
            second = await agent.run("Done yet?", message_history=first.all_messages())
            assert second.output == "Benchmarks are done."

    asyncio.run(main())
    assert reminders_in(model.inputs[1]) == []
    assert_delivered_once(model.inputs[2], started_task_id(model.inputs[2]), "benchmarks done")


def test_the_task_tools_keep_their_schemas_and_report_errors_to_the_model(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "ok"

    async def spawn_three(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[
                ToolCallPart("task", {"description": "first", "prompt": "one"}),
                ToolCallPart("task", {"description": "second", "prompt": "two"}),
                ToolCallPart("task", {"description": ""}),
            ]
        )

    async def finish(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        return ModelResponse(parts=[TextPart("ok")])

    model = ScriptedFunction(spawn_three, finish, reply("done"))

    async def main() -> dict[str, dict[str, Any]]:
        async with SubagentPool(store, max_concurrent=1) as pool:
            agent = Agent(
                FunctionModel(model), toolsets=[task_toolset(pool, subagent)], capabilities=[FollowupReminders(store)]
            )
            await agent.run("Start three tasks.")
            return {tool.name: tool.spec() for tool in task_tools(pool, subagent)}

    specs = asyncio.run(main())
    offered = {tool.name: tool for tool in model.infos[0].function_tools}
    assert set(offered) == {"task", "task_status", "list_tasks", "cancel_task", "send_message"}
    for name, spec in specs.items():
        assert offered[name].description == spec["description"]
        assert offered[name].parameters_json_schema == spec["input_schema"]
    returns = [part for part in model.inputs[1][-1].parts if isinstance(part, ToolReturnPart)]
    started, refused, invalid = returns
    assert started.outcome == "success" and "Started background task" in str(started.content)
    # at the cap: a failure the model sees, not a retry request
    assert refused.outcome == "failed" and "1 of 1 subagent slots are in use" in str(refused.content)
    assert invalid.outcome == "retried" and "Invalid arguments for task" in str(invalid.content)
    assert len(reminders_in(model.inputs[2])) == 1


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(TypeError, match="BackgroundStore"):
        FollowupReminders("not a store")  # type: ignore[arg-type]
    store = BackgroundStore(FollowupSettings())
    for bad_timeout in (0, -1.0, "5", True):
        with pytest.raises(ValueError, match="idle_timeout"):
            FollowupReminders(store, idle_timeout=bad_timeout)  # type: ignore[arg-type]


def test_the_example_prints_the_model_input_with_the_reminder_once(run_example: Callable[[str], str]) -> None:
    out = run_example("pydantic_ai_agent.py")
    assert out.count(REMINDER_START) == 1
    assert re.search(r"\[task \S+\] completed: 2 failing tests in test_api\.py", out)
    assert "later model calls: 1 reminder in history, none injected again" in out


class ScriptedStream:
    """A ``FunctionModel`` stream function: one async generator step per model call; records inputs."""

    def __init__(self, *steps: Callable[[list[ModelMessage]], AsyncIterator[Any]]) -> None:
        self.steps = steps
        self.inputs: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        self.inputs.append(list(messages))
        if len(self.inputs) > len(self.steps):
            raise AssertionError(f"unexpected model call {len(self.inputs)}")
        return self.steps[len(self.inputs) - 1](messages)


def test_run_stream_gives_back_a_result_that_finishes_while_the_final_answer_streams(store: BackgroundStore) -> None:
    """Regression: with ``resume_when_idle`` the final step waited, took the reminder and
    enqueued it after the streamed run had ended, and the streaming request confirmed it: the
    result was neither in the history nor pending."""
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "lint clean"

    async def spawn(messages: list[ModelMessage]) -> AsyncIterator[Any]:
        yield {0: DeltaToolCall(name="task", json_args='{"description": "lint", "prompt": "ruff check"}')}

    async def final_answer_while_the_subagent_finishes(messages: list[ModelMessage]) -> AsyncIterator[Any]:
        yield "Linting "
        release.set()
        assert await store.wait_for_notification(timeout=10)
        yield "runs in the background."

    stream = ScriptedStream(spawn, final_answer_while_the_subagent_finishes)
    answer = ScriptedFunction(reply("Lint is clean."))

    async def main() -> None:
        async with SubagentPool(store) as pool:
            toolset = task_toolset(pool, subagent)
            agent = Agent(FunctionModel(stream_function=stream), toolsets=[toolset], capabilities=[FollowupReminders(store)])
            async with agent.run_stream("Lint it.") as result:
                text = await result.get_output()
                history = result.all_messages()
            assert text == "Linting runs in the background."
            assert reminders_in(history) == []
            # not lost: pending again, with no lease left open
            assert store.pending_count() == 1
            assert store.leases() == []
            later = Agent(FunctionModel(answer), toolsets=[toolset], capabilities=[FollowupReminders(store)])
            second = await later.run("Is it done?", message_history=history)
            assert second.output == "Lint is clean."

    asyncio.run(main())
    assert_delivered_once(answer.inputs[0], started_task_id(answer.inputs[0]), "lint clean")
    assert not store.has_pending_notifications()


def test_a_history_saved_by_a_process_that_died_holding_the_lease_is_not_delivered_twice(relay_dir: Path) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    store.insert("build")
    store.notify("build", TaskState.completed("build green"))
    # the old process took the reminder, saved the history carrying it, and died unsettled
    delivery = take_followup(store)
    assert delivery is not None
    saved: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("Build it.")]),
        ModelRequest(
            parts=[
                UserPromptPart(
                    [
                        TextContent(
                            delivery.text,
                            metadata={
                                "followups": {
                                    "lease_id": delivery.lease_id,
                                    "notification_ids": list(delivery.notification_ids),
                                }
                            },
                        )
                    ]
                )
            ]
        ),
        ModelResponse(parts=[TextPart("The build is green.")]),
    ]
    clock.advance(31)  # the lease expired: the notification is pending again
    assert store.pending_count() == 1
    model = ScriptedFunction(reply("Nothing new."))

    async def main() -> None:
        agent = Agent(FunctionModel(model), capabilities=[FollowupReminders(store)])
        result = await agent.run("Anything else?", message_history=saved)
        assert result.output == "Nothing new."

    asyncio.run(main())
    # the history shows it was delivered: acknowledged, not injected again
    assert reminders_in(model.inputs[0]) == [saved[1].parts[0]]
    assert store.pending_count() == 0
    assert store.leases() == []


def test_each_reminder_request_carries_its_lease_in_the_metadata(store: BackgroundStore) -> None:
    store.insert("t")
    store.notify("t", TaskState.completed("done"))
    model = ScriptedFunction(reply("ok"))

    async def main() -> list[ModelMessage]:
        agent = Agent(FunctionModel(model), capabilities=[FollowupReminders(store)])
        return (await agent.run("Go.")).all_messages()

    history = asyncio.run(main())
    [part] = reminders_in(history)
    assert is_reminder_part(part) and not isinstance(part.content, str)
    meta = part.content[0].metadata["followups"]  # type: ignore[union-attr]
    assert isinstance(meta["lease_id"], str) and len(meta["notification_ids"]) == 1
    assert store.leases() == []


def test_two_conversations_on_one_store_stay_apart(store: BackgroundStore) -> None:
    store.session("alice").insert("a")
    store.session("alice").notify("a", TaskState.completed("alice's result"))
    store.session("bob").insert("b")
    store.session("bob").notify("b", TaskState.completed("bob's result"))
    alice_model = ScriptedFunction(reply("ok"))
    bob_model = ScriptedFunction(reply("ok"))

    async def main() -> None:
        alice = Agent(FunctionModel(alice_model), capabilities=[FollowupReminders(store, session="alice")])
        bob = Agent(FunctionModel(bob_model), capabilities=[FollowupReminders(store, session="bob")])
        await alice.run("hi")
        await bob.run("hi")

    asyncio.run(main())
    [alice_reminder] = reminders_in(alice_model.inputs[0])
    [bob_reminder] = reminders_in(bob_model.inputs[0])
    assert "alice's result" in prompt_text(alice_reminder) and "bob" not in prompt_text(alice_reminder)
    assert "bob's result" in prompt_text(bob_reminder) and "alice" not in prompt_text(bob_reminder)


def close_the_loop_run_sync_left() -> None:
    """``run_sync`` sets an event loop on the thread and leaves it open; close it here, where the
    test can, instead of leaving it to the garbage collector."""
    from pydantic_ai._utils import get_event_loop

    get_event_loop().close()
    asyncio.set_event_loop(None)


def test_run_sync_with_a_blocking_pool_wakes_up_for_a_result_after_the_final_answer(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return "deployed"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="deploy", prompt="deploy it")

    async def end_turn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        release.set()
        return ModelResponse(parts=[TextPart("Deploying in the background.")])

    model = ScriptedFunction(spawn, end_turn, reply("Deployed."))
    with BlockingPool(store) as pool:
        agent = Agent(FunctionModel(model), toolsets=[task_toolset(pool.pool, subagent)], capabilities=[FollowupReminders(store)])
        try:
            result = agent.run_sync("Deploy.")
        finally:
            close_the_loop_run_sync_left()
    assert result.output == "Deployed."
    assert_delivered_once(model.inputs[2], started_task_id(model.inputs[2]), "deployed")
    assert not store.has_pending_notifications()


def test_idle_resumes_are_bounded(store: BackgroundStore) -> None:
    release = asyncio.Event()

    async def subagent(request: TaskRequest) -> str:
        await release.wait()
        return "late"

    async def spawn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("task", description="slow", prompt="slow")

    model = ScriptedFunction(spawn, reply("Waiting."))

    async def main() -> None:
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(model),
                toolsets=[task_toolset(pool, subagent)],
                capabilities=[FollowupReminders(store, max_idle_resumes=0)],
            )
            result = await agent.run("Go.")
            assert result.output == "Waiting."
            assert store.live_count() == 1
            release.set()
            assert await store.wait_for_notification(timeout=10)

    asyncio.run(main())
    assert store.pending_count() == 1
