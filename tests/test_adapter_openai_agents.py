"""The OpenAI Agents SDK adapter, in real ``Runner.run`` loops driven by the SDK's own
``agents.testing.ScriptedModel`` (offline, tracing disabled). The SDK is asyncio-only, so the
tests are plain functions that call ``asyncio.run``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")

import anyio
from agents import Agent, RunConfig, SQLiteSession, function_tool
from agents.run_config import CallModelData, ModelInputData
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from followups import BackgroundStore, BlockingPool, FollowupSettings, SubagentPool, TaskState
from followups.adapters.openai_agents import (
    FollowupRunner,
    FollowupRunResult,
    FollowupStreamedRun,
    PlacedReminder,
    followup_function_tools,
    place_reminders,
)
from followups.delivery import ReminderDelivery
from followups.tools import TaskRequest
from helpers import FakeClock

CONFIG = RunConfig(tracing_disabled=True)
REVIEW_REPORT = "[task review-1] completed: Reviewed (review the diff): one unused import."


def is_reminder(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and item.get("role") == "user"
        and isinstance(item.get("content"), str)
        and item["content"].startswith("<system-reminder>")
    )


def reminder_positions(items: list[Any]) -> list[int]:
    return [index for index, item in enumerate(items) if is_reminder(item)]


def ids(*names: str) -> Callable[[], str]:
    return iter(names).__next__


def reviewer(may_finish: asyncio.Event) -> Callable[[TaskRequest], Awaitable[str]]:
    async def review(request: TaskRequest) -> str:
        await may_finish.wait()
        return f"Reviewed ({request.prompt}): one unused import."

    return review


def start_review(call_id: str = "call-task") -> list[Any]:
    return [function_call("task", {"description": "review", "prompt": "review the diff"}, call_id=call_id)]


def say(text: str, item_id: str) -> list[Any]:
    return [assistant_message(text, item_id=item_id)]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_finished_subagent_reaches_the_next_run_once_and_stays_in_the_kept_history(store: BackgroundStore) -> None:
    model = ScriptedModel(
        [
            start_review(),
            say("The review is running.", "msg-1"),
            [function_call("task_status", {"task_id": "review-1"}, call_id="call-status")],
            say("The review found one unused import.", "msg-2"),
            say("You're welcome.", "msg-3"),
        ]
    )
    runner = FollowupRunner(store, resume_when_idle=False)

    async def session() -> None:
        may_finish = asyncio.Event()
        async with SubagentPool(store, id_factory=ids("review-1")) as pool:
            agent = Agent(name="assistant", model=model, tools=followup_function_tools(pool, reviewer(may_finish)))
            first = await runner.run(agent, "Review my diff.", run_config=CONFIG)
            assert first.reminders == ()
            may_finish.set()
            await store.wait_for_notification()
            second = await runner.run(agent, [*first.to_input_list(), user("News?")], run_config=CONFIG)
            assert second.final_output == "The review found one unused import."
            await runner.run(agent, [*second.to_input_list(), user("Thanks.")], run_config=CONFIG)

    asyncio.run(session())

    calls = [call.input for call in model.calls]
    assert [reminder_positions(items) for items in calls[:2]] == [[], []]
    third, fourth, fifth = calls[2:]
    # The reminder is the last item of the first model call after the subagent finished...
    assert reminder_positions(third) == [len(third) - 1]
    assert third[-2] == user("News?")
    assert REVIEW_REPORT in third[-1]["content"]
    # ...stays at that place for the later calls of the same run (the runner itself forgets it)...
    assert reminder_positions(fourth) == [len(third) - 1]
    assert fourth[: len(third)] == third
    # ...and is in the history kept for the next run, still once.
    assert reminder_positions(fifth) == [len(third) - 1]
    assert fifth[: len(fourth)] == fourth
    assert sum(REVIEW_REPORT in str(item) for item in fifth) == 1
    assert store.pending_count() == 0


def test_a_subagent_finishing_during_a_run_is_delivered_within_that_run(store: BackgroundStore) -> None:
    may_finish = asyncio.Event()

    @function_tool
    async def wait_for_results() -> str:
        """Let the review finish, and wait until its result is pending."""
        may_finish.set()
        await store.wait_for_notification()
        return "a background result is pending"

    model = ScriptedModel(
        [
            start_review(),
            [function_call("wait_for_results", {}, call_id="call-wait")],
            [function_call("task_status", {"task_id": "review-1"}, call_id="call-status")],
            say("The review found one unused import.", "msg-1"),
        ]
    )

    async def session() -> list[Any]:
        async with SubagentPool(store, id_factory=ids("review-1")) as pool:
            tools = [*followup_function_tools(pool, reviewer(may_finish)), wait_for_results]
            agent = Agent(name="assistant", model=model, tools=tools)
            run = await FollowupRunner(store, resume_when_idle=False).run(agent, "Review my diff.", run_config=CONFIG)
        assert run.reminders == (PlacedReminder(5, run.reminders[0].text, ("review-1",)),)
        return run.to_input_list()

    history = asyncio.run(session())

    first, second, third, fourth = (call.input for call in model.calls)
    assert reminder_positions(first) == reminder_positions(second) == []
    assert second[-1]["type"] == "function_call_output"
    assert reminder_positions(third) == [len(third) - 1] == [5]
    assert REVIEW_REPORT in third[-1]["content"]
    assert reminder_positions(fourth) == [5] and fourth[:6] == third
    assert reminder_positions(history) == [5] and history[: len(fourth)] == fourth
    assert store.pending_count() == 0


@pytest.mark.parametrize("failing_call", ["first call of the run", "a later call of the run"])
def test_a_failed_run_gives_the_reminder_back_for_the_next_run(store: BackgroundStore, failing_call: str) -> None:
    outage = RuntimeError("model unavailable")
    failing_run: list[Any] = [outage]
    if failing_call == "a later call of the run":
        failing_run = [[function_call("task_status", {"task_id": "review-1"}, call_id="call-status")], outage]
    model = ScriptedModel(
        [
            start_review(),
            say("The review is running.", "msg-1"),
            *failing_run,
            say("The review found one unused import.", "msg-2"),
            say("You're welcome.", "msg-3"),
        ]
    )
    runner = FollowupRunner(store, resume_when_idle=False)

    async def session() -> None:
        may_finish = asyncio.Event()
        async with SubagentPool(store, id_factory=ids("review-1")) as pool:
            agent = Agent(name="assistant", model=model, tools=followup_function_tools(pool, reviewer(may_finish)))
            first = await runner.run(agent, "Review my diff.", run_config=CONFIG)
            may_finish.set()
            await store.wait_for_notification()
            history = [*first.to_input_list(), user("News?")]
            with pytest.raises(RuntimeError, match="model unavailable"):
                await runner.run(agent, history, run_config=CONFIG)
            assert store.pending_count() == 1  # given back, in the queue again
            retried = await runner.run(agent, history, run_config=CONFIG)
            assert store.pending_count() == 0
            await runner.run(agent, [*retried.to_input_list(), user("Thanks.")], run_config=CONFIG)

    asyncio.run(session())

    calls = [call.input for call in model.calls]
    failed = calls[2 : len(calls) - 2]
    assert all(reminder_positions(items) == [len(calls[2]) - 1] for items in failed)  # drained, shown, failed
    retry, after = calls[-2:]
    assert reminder_positions(retry) == [len(retry) - 1]
    assert REVIEW_REPORT in retry[-1]["content"]
    assert reminder_positions(after) == [len(retry) - 1]
    assert sum(REVIEW_REPORT in str(item) for item in after) == 1


def test_an_agent_used_as_a_tool_does_not_take_the_parents_reminders(store: BackgroundStore) -> None:
    may_finish = asyncio.Event()

    @function_tool
    async def wait_for_results() -> str:
        """Let the review finish, and wait until its result is pending."""
        may_finish.set()
        await store.wait_for_notification()
        return "a background result is pending"

    helper_model = ScriptedModel(
        [[function_call("wait_for_results", {}, call_id="call-wait")], say("Nothing to add.", "helper-1")]
    )
    helper = Agent(name="helper", model=helper_model, tools=[wait_for_results])
    model = ScriptedModel(
        [
            start_review(),
            [function_call("helper", {"input": "Wait for the review."}, call_id="call-helper")],
            say("The review found one unused import.", "msg-1"),
        ]
    )

    async def session() -> None:
        async with SubagentPool(store, id_factory=ids("review-1")) as pool:
            tools = [*followup_function_tools(pool, reviewer(may_finish)), helper.as_tool("helper", "A helper agent.")]
            agent = Agent(name="assistant", model=model, tools=tools)
            await FollowupRunner(store, resume_when_idle=False).run(agent, "Review my diff.", run_config=CONFIG)

    asyncio.run(session())

    assert [reminder_positions(call.input) for call in helper_model.calls] == [[], []]
    parent_last = model.calls[-1].input
    assert reminder_positions(parent_last) == [len(parent_last) - 1]
    assert REVIEW_REPORT in parent_last[-1]["content"]


def test_the_callers_own_input_filter_runs_after_the_reminder_is_in_place(store: BackgroundStore) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    seen: list[list[Any]] = []

    def trim_to_last_two(data: CallModelData[Any]) -> ModelInputData:
        seen.append(list(data.model_data.input))
        return ModelInputData(input=data.model_data.input[-2:], instructions="Be brief.")

    model = ScriptedModel([say("Lint is clean.", "msg-1")])
    config = RunConfig(tracing_disabled=True, call_model_input_filter=trim_to_last_two)
    run = asyncio.run(FollowupRunner(store, resume_when_idle=False).run(Agent(name="a", model=model), [user("a"), user("b")], run_config=config))

    assert reminder_positions(seen[0]) == [2]
    [call] = model.calls
    assert call.system_instructions == "Be brief."
    assert call.input[0] == user("b") and is_reminder(call.input[1])
    assert config.call_model_input_filter is trim_to_last_two  # the caller's config is not changed
    assert reminder_positions(run.to_input_list()) == [2]


@pytest.mark.parametrize(
    ("option", "value"),
    [("conversation_id", "conv-1"), ("previous_response_id", "resp-1"), ("auto_previous_response_id", True)],
)
def test_options_that_keep_the_history_elsewhere_are_refused(
    store: BackgroundStore, option: str, value: object
) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    agent = Agent(name="a", model=ScriptedModel([say("hi", "msg-1")]))
    with pytest.raises(ValueError, match=option):
        asyncio.run(FollowupRunner(store, resume_when_idle=False).run(agent, "hi", run_config=CONFIG, **{option: value}))
    assert store.pending_count() == 1


def test_place_reminders_keeps_order_and_never_drops_one() -> None:
    history = [user("a"), user("b")]
    reminders = [PlacedReminder(1, "<system-reminder>one", ("t1",)), PlacedReminder(9, "<system-reminder>two", ())]
    assert place_reminders(history, reminders) == [
        user("a"),
        user("<system-reminder>one"),
        user("b"),
        user("<system-reminder>two"),
    ]


def test_function_tools_keep_the_core_schemas_and_answer_bad_arguments_in_text(store: BackgroundStore) -> None:
    async def session() -> Iterator[str]:
        async def never_used(request: TaskRequest) -> str:
            raise AssertionError("no subagent should start")

        async with SubagentPool(store) as pool:
            tools = {tool.name: tool for tool in followup_function_tools(pool, never_used)}
            assert set(tools) == {"task", "task_status", "list_tasks", "cancel_task", "send_message"}
            assert set(tools["task"].params_json_schema["properties"]) == {"description", "prompt", "name"}
            assert tools["task"].params_json_schema["required"] == ["description", "prompt", "name"]
            task = tools["task"].on_invoke_tool
            return iter(
                [
                    await task(None, "{not json"),  # type: ignore[arg-type]
                    await task(None, json.dumps({"description": "x"})),  # type: ignore[arg-type]
                    await tools["task_status"].on_invoke_tool(None, '{"task_id": "nope"}'),  # type: ignore[arg-type]
                ]
            )

    bad_json, missing_prompt, unknown = asyncio.run(session())
    assert bad_json.startswith("Invalid arguments for task: not valid JSON")
    assert missing_prompt.startswith("Invalid arguments for task: prompt: Field required")
    assert unknown.startswith("No task 'nope' is known")
    assert len(store) == 0


def test_example_prints_the_model_input_with_the_reminder_once(run_example: Callable[[str], str]) -> None:
    out = run_example("openai_agents_agent.py")
    second_run, third_run = out.split("=== the model receives (third run")
    for shown in (second_run, third_run):
        assert shown.splitlines().count("<system-reminder>") == 1
        assert shown.count("[task review-1] completed: Reviewed (review the diff): one unused import in cli.py.") == 1
    assert "[user]\nIs the review done?\n[user]\n<system-reminder>\n" in second_run
    assert "</system-reminder>\n[assistant] The review found one unused import in cli.py.\n[user]\nThanks." in third_run
    assert "model calls: 4, notifications pending: 0" in out


# -- idle wake-up, sessions, streaming, approval, sync ----------------------------------------


def releasing(event: asyncio.Event, output: list[Any]) -> ModelStep:
    """A model step that lets the subagent finish, then answers ``output``."""

    def respond(call: Any) -> list[Any]:
        event.set()
        return output

    return ModelStep.respond(respond)


def test_a_result_finishing_after_the_final_answer_runs_the_agent_again_by_itself(store: BackgroundStore) -> None:
    may_finish = asyncio.Event()
    model = ScriptedModel(
        [
            start_review(),
            releasing(may_finish, say("The review is running.", "msg-1")),
            say("The review found one unused import.", "msg-2"),
        ]
    )

    async def main() -> FollowupRunResult:
        async with SubagentPool(store, id_factory=ids("review-1")) as pool:
            agent = Agent(name="assistant", model=model, tools=followup_function_tools(pool, reviewer(may_finish)))
            return await FollowupRunner(store).run(agent, "Review my diff.", run_config=CONFIG)

    run = asyncio.run(main())
    assert run.final_output == "The review found one unused import."
    assert run.idle_resumes == 1
    third = model.calls[2].input
    assert reminder_positions(third) == [len(third) - 1] and REVIEW_REPORT in third[-1]["content"]
    kept = run.to_input_list()
    assert sum(REVIEW_REPORT in str(item) for item in kept) == 1
    assert store.pending_count() == 0 and store.leases() == []


def test_idle_wake_up_can_be_switched_off_and_is_bounded(store: BackgroundStore) -> None:
    for runner in (FollowupRunner(store, resume_when_idle=False), FollowupRunner(store, max_idle_resumes=0)):
        may_finish = asyncio.Event()
        model = ScriptedModel([start_review(), releasing(may_finish, say("Running.", "msg-1"))])

        async def main(runner: FollowupRunner = runner, model: ScriptedModel = model, may_finish: asyncio.Event = may_finish) -> None:
            async with SubagentPool(store, close="wait") as pool:
                agent = Agent(name="a", model=model, tools=followup_function_tools(pool, reviewer(may_finish)))
                run = await runner.run(agent, "Review.", run_config=CONFIG)
                assert run.idle_resumes == 0 and run.final_output == "Running."

        asyncio.run(main())
        assert store.pending_count() == 1
        store.drain_notifications()


def test_sdk_sessions_map_to_followups_sessions_and_keep_their_reminders(store: BackgroundStore) -> None:
    for name in ("alice", "bob"):
        store.session(name).insert(f"{name}-job")
        store.session(name).notify(f"{name}-job", TaskState.completed(f"{name}'s result"))
    models = {name: ScriptedModel([say("Noted.", "msg-1"), say("Nothing new.", "msg-2")]) for name in ("alice", "bob")}

    async def main() -> dict[str, list[Any]]:
        runner = FollowupRunner(store)
        saved = {}
        for name, model in models.items():
            sdk_session = SQLiteSession(name)
            agent = Agent(name="a", model=model)
            await runner.run(agent, "hi", run_config=CONFIG, session=sdk_session)
            await runner.run(agent, "anything else?", run_config=CONFIG, session=sdk_session)
            saved[name] = await sdk_session.get_items()
        return saved

    saved = asyncio.run(main())
    for name, other in (("alice", "bob"), ("bob", "alice")):
        first, second = (call.input for call in models[name].calls)
        [reminder] = [item for item in first if is_reminder(item)]
        assert f"{name}'s result" in reminder["content"] and other not in reminder["content"]
        # the SDK session kept it, so the next run sees it once, from there
        assert [item for item in second if is_reminder(item)] == [reminder]
        assert sum(is_reminder(item) for item in saved[name]) == 1
        assert not store.session(name).has_pending_notifications()
    assert store.leases() == []


def test_run_streamed_confirms_once_the_stream_has_run_and_gives_back_a_failed_one(store: BackgroundStore) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))
    failing = ScriptedModel([RuntimeError("stream broke")])
    working = ScriptedModel([say("Lint is clean.", "msg-1")])

    async def main() -> FollowupStreamedRun:
        runner = FollowupRunner(store)
        broken = runner.run_streamed(Agent(name="a", model=failing), "Lint?", run_config=CONFIG)
        with pytest.raises(RuntimeError, match="stream broke"):
            async for _ in broken.stream_events():
                pass
        assert store.pending_count() == 1 and store.leases() == []
        streamed = runner.run_streamed(Agent(name="a", model=working), "Lint?", run_config=CONFIG)
        events = [event async for event in streamed.stream_events()]
        assert events
        return streamed

    streamed = asyncio.run(main())
    assert streamed.final_output == "Lint is clean."
    assert working.calls[0].streamed and reminder_positions(working.calls[0].input) == [1]
    assert sum(is_reminder(item) for item in streamed.to_input_list()) == 1
    assert store.pending_count() == 0 and store.leases() == []


def test_a_run_paused_for_tool_approval_resumes_from_its_state_with_the_reminder_in_place(
    store: BackgroundStore,
) -> None:
    store.insert("lint")
    store.notify("lint", TaskState.completed("no problems"))

    @function_tool(needs_approval=True)
    def deploy() -> str:
        """Deploy the service."""
        return "deployed"

    model = ScriptedModel([[function_call("deploy", {}, call_id="call-deploy")], say("Deployed; lint is clean.", "msg-1")])

    async def main() -> FollowupRunResult:
        runner = FollowupRunner(store)
        agent = Agent(name="a", model=model, tools=[deploy])
        paused = await runner.run(agent, "Deploy.", run_config=CONFIG)
        assert paused.interruptions
        state = paused.to_state()
        state.approve(paused.interruptions[0])
        return await runner.run(agent, state, run_config=CONFIG)

    resumed = asyncio.run(main())
    assert resumed.final_output == "Deployed; lint is clean."
    first, second = (call.input for call in model.calls)
    assert reminder_positions(first) == [1]
    assert reminder_positions(second) == [1]  # put back at its place after the pause, once
    assert sum(is_reminder(item) for item in resumed.to_input_list()) == 1
    assert store.pending_count() == 0 and store.leases() == []


def test_run_sync_with_a_blocking_pool_delivers_and_wakes_up(store: BackgroundStore) -> None:
    import threading

    may_finish = threading.Event()

    async def review(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(may_finish.wait)
        return f"Reviewed ({request.prompt}): one unused import."

    def respond(call: Any) -> list[Any]:
        may_finish.set()
        return say("The review is running.", "msg-1")

    model = ScriptedModel([start_review(), ModelStep.respond(respond), say("One unused import.", "msg-2")])
    with BlockingPool(store, id_factory=ids("review-1")) as pool:
        agent = Agent(name="a", model=model, tools=followup_function_tools(pool.pool, review))
        run = FollowupRunner(store).run_sync(pool, agent, "Review my diff.", run_config=CONFIG)
    assert run.final_output == "One unused import."
    assert REVIEW_REPORT in model.calls[2].input[-1]["content"]
    assert store.pending_count() == 0
    with BlockingPool(store, backend="trio") as trio_pool, pytest.raises(ValueError, match="asyncio"):
        FollowupRunner(store).run_sync(trio_pool, agent, "hi")


def died_holding_the_lease(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make every delivery unsettleable, as in a process that dies after the history was saved
    and before it could confirm; the returned function revives settling."""
    monkeypatch.setattr(ReminderDelivery, "_settle", lambda self: False)
    return monkeypatch.undo


@pytest.mark.parametrize("history_kept_in", ["input list", "SDK session"])
def test_a_history_saved_by_a_run_that_died_holding_the_lease_is_not_sent_the_reminder_again(
    relay_dir: Path, monkeypatch: pytest.MonkeyPatch, history_kept_in: str
) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    sdk_session = SQLiteSession("conv") if history_kept_in == "SDK session" else None
    conversation = store if sdk_session is None else store.session("conv")
    conversation.insert("review-1")
    conversation.notify("review-1", TaskState.completed("one unused import"))
    dying = ScriptedModel([say("Noted.", "msg-1")])
    rebuilt = ScriptedModel([say("Nothing new.", "msg-2")])

    async def main() -> None:
        options: dict[str, Any] = {} if sdk_session is None else {"session": sdk_session}
        revive = died_holding_the_lease(monkeypatch)
        run = await FollowupRunner(store, resume_when_idle=False).run(
            Agent(name="a", model=dying), "hi", run_config=CONFIG, **options
        )
        revive()
        history = run.to_input_list() if sdk_session is None else await sdk_session.get_items()
        assert sum(is_reminder(item) for item in history) == 1
        clock.advance(31)  # the dead run's lease expired: the notification is pending again
        assert conversation.pending_count() == 1
        follow_up: Any = "anything new?" if sdk_session is not None else [*history, user("anything new?")]
        await FollowupRunner(store, resume_when_idle=False).run(
            Agent(name="a", model=rebuilt), follow_up, run_config=CONFIG, **options
        )

    asyncio.run(main())
    [call] = rebuilt.calls
    assert sum(is_reminder(item) for item in call.input) == 1  # the saved one, not a second copy
    assert conversation.pending_count() == 0 and conversation.leases() == []
    assert not store.reminder_labels.has_any(conversation.id)


def test_a_reminder_the_dead_run_never_saved_is_delivered_after_its_lease_expires(
    relay_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    # the same report twice: a copy already in the history must not pass for the lost one
    store.insert("review-1")
    store.notify("review-1", TaskState.completed("one unused import"))
    first = ScriptedModel([say("Noted.", "msg-1")])
    dying = ScriptedModel([say("Noted again.", "msg-2")])
    rebuilt = ScriptedModel([say("Got it.", "msg-3")])

    async def main() -> None:
        runner = FollowupRunner(store, resume_when_idle=False)
        kept = (await runner.run(Agent(name="a", model=first), "hi", run_config=CONFIG)).to_input_list()
        store.insert("review-1")
        store.notify("review-1", TaskState.completed("one unused import"))
        revive = died_holding_the_lease(monkeypatch)
        await runner.run(Agent(name="a", model=dying), [*kept, user("again?")], run_config=CONFIG)
        revive()  # its history was lost with it: the caller still has `kept`
        clock.advance(31)
        await runner.run(Agent(name="a", model=rebuilt), [*kept, user("again?")], run_config=CONFIG)

    asyncio.run(main())
    [call] = rebuilt.calls
    reminders = [item["content"] for item in call.input if is_reminder(item)]
    assert len(reminders) == 2 and reminders[0] == reminders[1]  # the old one, and the lost one delivered anew
    assert store.pending_count() == 0 and store.leases() == []


def test_an_idle_wake_up_with_an_sdk_session_keeps_its_reminder_there_once(store: BackgroundStore) -> None:
    conversation = store.session("conv")
    may_finish = asyncio.Event()
    model = ScriptedModel(
        [
            start_review(),
            releasing(may_finish, say("The review is running.", "msg-1")),
            say("The review found one unused import.", "msg-2"),
            say("Nothing else.", "msg-3"),
        ]
    )
    sdk_session = SQLiteSession("conv")

    async def main() -> list[Any]:
        async with SubagentPool(conversation, id_factory=ids("review-1")) as pool:
            agent = Agent(name="assistant", model=model, tools=followup_function_tools(pool, reviewer(may_finish)))
            runner = FollowupRunner(store)
            run = await runner.run(agent, "Review my diff.", run_config=CONFIG, session=sdk_session)
            assert run.idle_resumes == 1
            await runner.run(agent, "Anything else?", run_config=CONFIG, session=sdk_session)
        return await sdk_session.get_items()

    saved = asyncio.run(main())
    assert [REVIEW_REPORT in item["content"] for item in saved if is_reminder(item)] == [True]
    assert sum(is_reminder(item) for item in model.calls[3].input) == 1
    assert conversation.pending_count() == 0 and conversation.leases() == []
    assert not store.reminder_labels.has_any(conversation.id)
