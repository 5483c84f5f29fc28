"""The LangChain adapter in real ``create_agent`` loops, offline: a ``GenericFakeChatModel`` that
records each model input, the task tools as LangChain tools, a real ``SubagentPool``."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip("langchain.agents")

import anyio  # noqa: E402
import trio  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import ModelRetryMiddleware  # noqa: E402
from langchain.agents.structured_output import ToolStrategy  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatResult  # noqa: E402
from langchain_core.runnables import RunnableConfig  # noqa: E402
from langchain_core.tools import BaseTool, tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from followups import BackgroundStore, BlockingPool, FollowupSettings, SubagentPool, TaskState  # noqa: E402
from helpers import FakeClock  # noqa: E402
from followups.adapters.langchain_agents import (  # noqa: E402
    REMINDER_ID_PREFIX,
    FollowupMiddleware,
    is_reminder_message,
    langchain_task_tools,
    to_langchain_tool,
    to_langchain_tools,
)
from followups.delivery import take_followup  # noqa: E402
from followups.tools import TaskRequest, Tool, ToolOutcome, task_tools  # noqa: E402

RESULT = "3 flaky tests: test_pool_cancel, test_relay_race, test_wakeup"


class ModelUnavailable(RuntimeError):
    pass


class RecordingChatModel(GenericFakeChatModel):
    """Replies from the script; records every input it is called with (failed calls too), and
    raises :class:`ModelUnavailable` instead of replying while ``failures`` is positive."""

    inputs: list[list[BaseMessage]] = Field(default_factory=list)
    failures: int = 0
    on_call: Callable[[int], None] | None = None  # told each call's number (1, 2, ...) as it starts

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RecordingChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.inputs.append(list(messages))
        if self.on_call is not None:
            self.on_call(len(self.inputs))
        if self.failures:
            self.failures -= 1
            raise ModelUnavailable("the model is unavailable")
        return super()._generate(messages, *args, **kwargs)


def scripted(*replies: AIMessage | str) -> RecordingChatModel:
    return RecordingChatModel(messages=iter(replies))


def call(name: str, call_id: str, **args: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])


def start_search() -> AIMessage:
    return call("task", "call-task", description="flaky tests", prompt="find the flaky tests")


def reminders(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The messages that are a reminder, whatever their role. (Tool results of the task tool
    mention ``<system-reminder>`` in passing; a reminder starts with it.)"""
    return [message for message in messages if message.text.startswith("<system-reminder>")]


def the_reminder(messages: Sequence[BaseMessage]) -> HumanMessage:
    """The one reminder in ``messages``; fails unless there is exactly one, in a user turn."""
    [message] = reminders(messages)
    assert isinstance(message, HumanMessage) and is_reminder_message(message)
    assert message.id is not None and message.id.startswith(REMINDER_ID_PREFIX)
    assert not any(isinstance(other, SystemMessage) and "<system-reminder>" in other.text for other in messages)
    return message


class GatedSubagent:
    """A subagent that finishes with :data:`RESULT` once ``release()`` is called."""

    def __init__(self) -> None:
        self.requests: list[TaskRequest] = []
        self.called = anyio.Event()
        self._release = anyio.Event()

    def release(self) -> None:
        self._release.set()

    async def __call__(self, request: TaskRequest) -> str:
        self.requests.append(request)
        self.called.set()
        await self._release.wait()
        return RESULT


Invoke = Callable[..., Awaitable[dict[str, Any]]]


async def invoke_in_thread(agent: Any, agent_input: Any, config: Any = None) -> dict[str, Any]:
    """A sync user: ``agent.invoke`` in a worker thread, never on the pool's loop thread."""
    result: dict[str, Any] = await anyio.to_thread.run_sync(functools.partial(agent.invoke, agent_input, config))
    return result


async def ainvoke(agent: Any, agent_input: Any, config: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = await agent.ainvoke(agent_input, config)
    return result


RUNNERS: dict[str, tuple[str, Invoke]] = {"invoke": ("trio", invoke_in_thread), "ainvoke": ("asyncio", ainvoke)}


def run_with(mode: str, scenario: Callable[[Invoke], Awaitable[None]]) -> None:
    """Run ``scenario`` under trio with sync ``invoke`` or under asyncio with ``ainvoke``."""
    backend, invoke = RUNNERS[mode]
    anyio.run(scenario, invoke, backend=backend)


def search_ids() -> Iterator[str]:
    return iter(["search"])


# -- one loop each way ------------------------------------------------------------------------


async def test_sync_invoke_puts_the_result_in_one_user_turn_that_later_calls_see_once(
    store: BackgroundStore,
) -> None:
    model = scripted(
        start_search(),
        "A background search for flaky tests is running.",
        call("task_status", "call-status", task_id="search"),
        "There are 3 flaky tests.",
        "Starting fresh.",
    )
    subagent = GatedSubagent()
    middleware = FollowupMiddleware(store, resume_when_idle=False)
    with trio.fail_after(30):
        async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
            agent = create_agent(
                model,
                tools=langchain_task_tools(pool, subagent),
                system_prompt="You fix flaky tests.",
                middleware=[middleware],
            )
            first = await invoke_in_thread(agent, {"messages": [HumanMessage("Find the flaky tests.")]})
            [started] = [message for message in first["messages"] if isinstance(message, ToolMessage)]
            assert started.status == "success"
            assert started.text.startswith("Started background task search (flaky tests).")
            await subagent.called.wait()  # spawned from the worker thread, it starts on this loop
            assert subagent.requests == [TaskRequest("flaky tests", "find the flaky tests")]
            assert [reminders(model_input) for model_input in model.inputs] == [[], []]

            subagent.release()
            assert await store.wait_for_notification()
            second = await invoke_in_thread(agent, {"messages": [*first["messages"], HumanMessage("Any news?")]})
            assert middleware.unsettled_task_ids() == ()  # confirmed once the model call succeeded
            await invoke_in_thread(agent, {"messages": [HumanMessage("A new conversation.")]})

    delivered = the_reminder(model.inputs[2])
    assert model.inputs[2][0] == SystemMessage("You fix flaky tests.")  # the system prompt is left alone
    assert [message.text for message in model.inputs[2][-2:]] == ["Any news?", delivered.text]
    assert "search" in delivered.text and RESULT in delivered.text
    # The next call of the run sees the same message from history; it is never added again,
    # not even to a conversation that starts over without it.
    assert the_reminder(model.inputs[3]).id == delivered.id
    assert the_reminder(second["messages"]).id == delivered.id
    assert reminders(model.inputs[4]) == []
    assert len(model.inputs) == 5
    assert not store.has_pending_notifications()
    assert middleware.unsettled_task_ids() == ()


def test_ainvoke_delivers_at_the_next_model_call_of_the_same_run(store: BackgroundStore) -> None:
    model = scripted(
        start_search(),
        call("wait_for_background", "call-wait"),
        "There are 3 flaky tests.",
        "You're welcome.",
    )
    middleware = FollowupMiddleware(store, resume_when_idle=False)

    async def session() -> dict[str, Any]:
        subagent = GatedSubagent()

        @tool
        async def wait_for_background() -> str:
            """Wait until a background task reports."""
            subagent.release()
            await store.wait_for_notification()
            return "A background task reported."

        async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
            tools: list[BaseTool] = [*langchain_task_tools(pool, subagent), wait_for_background]
            agent = create_agent(model, tools=tools, middleware=[middleware])
            result = await agent.ainvoke({"messages": [HumanMessage("Find the flaky tests.")]})
            assert middleware.unsettled_task_ids() == ()
            return await agent.ainvoke({"messages": [*result["messages"], HumanMessage("Thanks.")]})

    final = asyncio.run(asyncio.wait_for(session(), 30))
    assert [reminders(model_input) for model_input in model.inputs[:2]] == [[], []]
    delivered = the_reminder(model.inputs[2])
    assert RESULT in delivered.text
    assert isinstance(model.inputs[2][-2], ToolMessage)  # the reminder follows the tool result
    assert the_reminder(model.inputs[3]).id == delivered.id
    assert the_reminder(final["messages"]).id == delivered.id
    assert not store.has_pending_notifications()
    assert middleware.unsettled_task_ids() == ()


async def test_parallel_sync_task_calls_from_worker_threads_respect_the_cap(store: BackgroundStore) -> None:
    two_tasks = AIMessage(
        content="",
        tool_calls=[
            {"name": "task", "args": {"description": f"job {n}", "prompt": f"do job {n}"}, "id": f"c{n}",
             "type": "tool_call"}
            for n in (1, 2)
        ],
    )
    model = scripted(two_tasks, "One job started.")
    subagent = GatedSubagent()
    with trio.fail_after(30):
        async with SubagentPool(store, max_concurrent=1) as pool:
            tools = langchain_task_tools(pool, subagent)
            agent = create_agent(model, tools=tools, middleware=[FollowupMiddleware(store, resume_when_idle=False)])
            result = await invoke_in_thread(agent, {"messages": [HumanMessage("Run both jobs.")]})
            assert pool.live_count() == 1
            subagent.release()
    outcomes = sorted((message.status, message.text[:40]) for message in result["messages"]
                      if isinstance(message, ToolMessage))
    assert [status for status, _ in outcomes] == ["error", "success"]
    assert outcomes[0][1].startswith("Cannot start another background task")


# -- failure between the drain and the model call ---------------------------------------------


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_failed_call_without_checkpointer_is_delivered_once_by_the_next_run(
    mode: str, store: BackgroundStore
) -> None:
    model = scripted(start_search(), "Searching.", "There are 3 flaky tests; lint is clean.", "Bye.")
    middleware = FollowupMiddleware(store, resume_when_idle=False)

    async def scenario(invoke: Invoke) -> None:
        subagent = GatedSubagent()
        with anyio.fail_after(30):
            async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
                agent = create_agent(model, tools=langchain_task_tools(pool, subagent), middleware=[middleware])
                first = await invoke(agent, {"messages": [HumanMessage("Find the flaky tests.")]})
                subagent.release()
                assert await store.wait_for_notification()
                history = [*first["messages"], HumanMessage("Any news?")]

                model.failures = 1
                with pytest.raises(ModelUnavailable):
                    await invoke(agent, {"messages": history})
                assert RESULT in the_reminder(model.inputs[2]).text  # drained before the call failed
                assert middleware.unsettled_task_ids() == ("search",)

                # a newer result arrives before the retry: both go in one reminder, oldest first
                store.insert("lint", description="lint")
                store.notify("lint", TaskState.completed("lint is clean"))
                retried = await invoke(agent, {"messages": history})
                await invoke(agent, {"messages": [*retried["messages"], HumanMessage("Thanks.")]})

    run_with(mode, scenario)
    delivered = the_reminder(model.inputs[3])
    assert delivered.id != the_reminder(model.inputs[2]).id
    assert RESULT in delivered.text and "lint is clean" in delivered.text
    assert delivered.text.index(RESULT) < delivered.text.index("lint is clean")
    assert the_reminder(model.inputs[4]).id == delivered.id
    assert not store.has_pending_notifications()
    assert middleware.unsettled_task_ids() == ()


@pytest.mark.parametrize("retry", ["resume", "new input"])
@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_failed_call_with_checkpointer_keeps_the_saved_reminder_and_never_repeats_it(
    mode: str, retry: str, store: BackgroundStore
) -> None:
    model = scripted(start_search(), "Searching.", "Hello.", "There are 3 flaky tests.", "Bye.")
    middleware = FollowupMiddleware(store, resume_when_idle=False)
    thread: RunnableConfig = {"configurable": {"thread_id": "conversation"}}
    other_thread: RunnableConfig = {"configurable": {"thread_id": "another conversation"}}
    saved: list[BaseMessage] = []

    async def scenario(invoke: Invoke) -> None:
        subagent = GatedSubagent()
        with anyio.fail_after(30):
            async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
                agent = create_agent(
                    model,
                    tools=langchain_task_tools(pool, subagent),
                    middleware=[middleware],
                    checkpointer=InMemorySaver(),
                )
                await invoke(agent, {"messages": [HumanMessage("Find the flaky tests.")]}, thread)
                subagent.release()
                assert await store.session("conversation").wait_for_notification()

                model.failures = 1
                with pytest.raises(ModelUnavailable):
                    await invoke(agent, {"messages": [HumanMessage("Any news?")]}, thread)
                # The reminder was saved in the thread: it must not go to another conversation.
                await invoke(agent, {"messages": [HumanMessage("Hi.")]}, other_thread)

                retry_input = None if retry == "resume" else {"messages": [HumanMessage("Still there?")]}
                await invoke(agent, retry_input, thread)
                await invoke(agent, {"messages": [HumanMessage("Thanks.")]}, thread)
                saved.extend(agent.get_state(thread).values["messages"])

    run_with(mode, scenario)
    failed_with = the_reminder(model.inputs[2])
    assert reminders(model.inputs[3]) == []  # the other thread
    assert the_reminder(model.inputs[4]).id == failed_with.id  # from the saved state, once
    assert the_reminder(model.inputs[5]).id == failed_with.id
    assert the_reminder(saved).id == failed_with.id
    assert not store.session("conversation").has_pending_notifications()
    assert middleware.unsettled_task_ids() == ()


async def test_a_retrying_middleware_resends_the_reminder_it_already_holds_once(store: BackgroundStore) -> None:
    model = scripted("The lint run is clean.", "Something else.")
    model.failures = 1
    middleware = FollowupMiddleware(store, resume_when_idle=False)
    retry = ModelRetryMiddleware(max_retries=1, initial_delay=0, jitter=False, on_failure="error")
    agent = create_agent(model, tools=[], middleware=[retry, middleware])
    store.insert("lint", description="lint")
    store.notify("lint", TaskState.completed("lint is clean"))
    with trio.fail_after(30):
        result = await invoke_in_thread(agent, {"messages": [HumanMessage("How is lint?")]})
        await invoke_in_thread(agent, {"messages": [HumanMessage("Something else.")]})
    failed, retried, later = model.inputs
    assert the_reminder(failed).id == the_reminder(retried).id == the_reminder(result["messages"]).id
    assert reminders(later) == []
    assert not store.has_pending_notifications()


# -- tools ------------------------------------------------------------------------------------


async def test_task_tools_keep_their_names_descriptions_and_schemas(store: BackgroundStore) -> None:
    async with SubagentPool(store) as pool:
        core = task_tools(pool, GatedSubagent())
        converted = to_langchain_tools(core)
        for original, lc_tool in zip(core, converted, strict=True):
            assert lc_tool.name == original.name
            assert lc_tool.description == original.description
            assert lc_tool.args_schema is original.parameters
        by_name = {lc_tool.name: lc_tool for lc_tool in converted}
        unknown = by_name["task_status"].invoke(
            {"name": "task_status", "args": {"task_id": "nope"}, "id": "c1", "type": "tool_call"}
        )
        assert isinstance(unknown, ToolMessage) and unknown.status == "error"
        assert unknown.text.startswith("No task 'nope' is known")
        with pytest.raises(ValueError, match="two tools are named 'task'"):
            to_langchain_tools([core[0], core[0]])


class ShoutArgs(BaseModel):
    text: str


def test_a_handler_that_raises_becomes_an_error_tool_message_for_the_model() -> None:
    def broken(args: ShoutArgs) -> str:
        raise ValueError(f"cannot shout {args.text!r}")

    lc_tool = to_langchain_tool(Tool("shout", "Shout it.", ShoutArgs, broken))
    message = lc_tool.invoke({"name": "shout", "args": {"text": "hi"}, "id": "c1", "type": "tool_call"})
    assert isinstance(message, ToolMessage) and message.status == "error"
    assert message.text == "Tool shout failed: ValueError: cannot shout 'hi'"


def test_async_handlers_work_from_ainvoke_and_are_refused_by_the_sync_path() -> None:
    async def shout(args: ShoutArgs) -> ToolOutcome:
        return ToolOutcome(args.text.upper())

    lc_tool = to_langchain_tool(Tool("shout", "Shout it.", ShoutArgs, shout))
    assert asyncio.run(lc_tool.ainvoke({"text": "hi"})) == "HI"
    with pytest.raises(TypeError, match="'shout' has an async handler"):
        lc_tool.invoke({"text": "hi"})


# -- the example ------------------------------------------------------------------------------


def test_example_prints_the_model_input_with_the_reminder_once(run_example: Callable[[str], str]) -> None:
    out = run_example("langchain_agents_agent.py")
    assert re.search(r"^model call 3 failed \(the model endpoint timed out\); held for the retry: 1 result", out)
    assert re.search(
        r"=== model input of call 4 ===\n(?:.|\n)*\[human\]\nAny news\?\n\[human, reminder\]\n<system-reminder>\n"
        r"The following background tasks finished since your last turn:\n\n"
        r"\[task [0-9a-f]{8}\] completed: Reviewed \(review the diff\): one unused import in cli\.py\.\n"
        r"</system-reminder>\n\nreminders in that input: 1\nreminders in the final history: 1\n",
        out,
    )
    assert out.count("\n<system-reminder>\n") == 1
    assert out.rstrip().endswith("answer: The review found one unused import in cli.py.")


# -- settling from the state, idle wake-up, sessions, the sync path ---------------------------


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_rebuilt_agent_after_a_failed_run_delivers_the_result_the_old_one_held(
    mode: str, store: BackgroundStore
) -> None:
    """Regression: the old middleware object held the failed run's delivery, and a new agent
    (a new middleware) never got the result: it was neither pending nor delivered."""
    model = scripted(start_search(), "Searching.", "There are 3 flaky tests.")

    async def scenario(invoke: Invoke) -> None:
        subagent = GatedSubagent()
        with anyio.fail_after(30):
            async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
                tools = langchain_task_tools(pool, subagent)
                old = create_agent(model, tools=tools, middleware=[FollowupMiddleware(store, resume_when_idle=False)])
                first = await invoke(old, {"messages": [HumanMessage("Find the flaky tests.")]})
                subagent.release()
                assert await store.wait_for_notification()
                history = [*first["messages"], HumanMessage("Any news?")]
                model.failures = 1
                with pytest.raises(ModelUnavailable):
                    await invoke(old, {"messages": history})
                assert [lease.task_ids for lease in store.leases()] == [("search",)]  # in the ledger, by id

                rebuilt = create_agent(model, tools=tools, middleware=[FollowupMiddleware(store, resume_when_idle=False)])
                final = await invoke(rebuilt, {"messages": history})
                assert the_reminder(final["messages"]).text == the_reminder(model.inputs[3]).text

    run_with(mode, scenario)
    assert RESULT in the_reminder(model.inputs[3]).text
    assert not store.has_pending_notifications()
    assert store.leases() == []


def test_the_reminder_message_names_its_lease(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("done"))
    model = scripted("ok")
    agent = create_agent(model, tools=[], middleware=[FollowupMiddleware(store)])
    result = agent.invoke({"messages": [HumanMessage("hi")]})
    message = the_reminder(result["messages"])
    meta = message.additional_kwargs["followups"]
    assert message.id == f"{REMINDER_ID_PREFIX}{meta['lease_id']}"
    assert len(meta["notification_ids"]) == 1
    assert store.leases() == [] and not store.has_pending_notifications()


def test_a_history_saved_by_a_process_that_died_holding_the_lease_is_not_sent_twice(relay_dir: Any) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=30), clock=clock)
    store.insert("t1")
    store.notify("t1", TaskState.completed("done"))
    # the old process leased the reminder, checkpointed the message, and died unsettled
    delivery = take_followup(store)
    assert delivery is not None
    saved = HumanMessage(
        content=delivery.text,
        id=f"{REMINDER_ID_PREFIX}{delivery.lease_id}",
        additional_kwargs={"followups": {"lease_id": delivery.lease_id, "notification_ids": list(delivery.notification_ids)}},
    )
    clock.advance(31)
    assert store.pending_count() == 1  # the expired lease came back
    model = scripted("ok")
    rebuilt = create_agent(model, tools=[], middleware=[FollowupMiddleware(store)])
    rebuilt.invoke({"messages": [HumanMessage("hi"), saved, AIMessage("noted"), HumanMessage("more?")]})
    assert the_reminder(model.inputs[0]).id == saved.id  # the saved one, and no second copy
    assert store.pending_count() == 0 and store.leases() == []


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_result_finishing_after_the_final_answer_continues_the_run_by_itself(
    mode: str, store: BackgroundStore
) -> None:
    model = scripted(start_search(), "The search runs in the background.", "There are 3 flaky tests.")
    subagent = GatedSubagent()
    loop: list[Any] = []

    def release_on_the_final_answer(number: int) -> None:
        if number == 2:
            loop[0](subagent.release)

    model.on_call = release_on_the_final_answer

    async def scenario(invoke: Invoke) -> None:
        token = anyio.lowlevel.current_token()
        loop.append(lambda fn: anyio.from_thread.run_sync(fn, token=token) if mode == "invoke" else fn())
        with anyio.fail_after(30):
            async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
                agent = create_agent(model, tools=langchain_task_tools(pool, subagent), middleware=[FollowupMiddleware(store)])
                result = await invoke(agent, {"messages": [HumanMessage("Find the flaky tests.")]})
                assert result["messages"][-1].text == "There are 3 flaky tests."

    run_with(mode, scenario)
    assert len(model.inputs) == 3
    delivered = the_reminder(model.inputs[2])
    assert RESULT in delivered.text
    assert model.inputs[2][-2].text == "The search runs in the background."
    assert not store.has_pending_notifications() and store.leases() == []


def test_sync_invoke_with_a_blocking_pool_wakes_up_without_any_event_loop_of_its_own(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return RESULT

    model = scripted(start_search(), "The search runs in the background.", "There are 3 flaky tests.")
    model.on_call = lambda number: release.set() if number == 2 else None
    with BlockingPool(store, id_factory=search_ids().__next__) as pool:
        agent = create_agent(model, tools=langchain_task_tools(pool.pool, subagent), middleware=[FollowupMiddleware(store)])
        result = agent.invoke({"messages": [HumanMessage("Find the flaky tests.")]})
    assert result["messages"][-1].text == "There are 3 flaky tests."
    assert RESULT in the_reminder(model.inputs[2]).text
    assert not store.has_pending_notifications()


def test_idle_wake_up_is_off_when_switched_off_or_bounded(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return RESULT

    for middleware in (FollowupMiddleware(store, resume_when_idle=False), FollowupMiddleware(store, max_idle_resumes=0)):
        model = scripted(start_search(), "The search runs in the background.")
        with BlockingPool(store) as pool:
            agent = create_agent(model, tools=langchain_task_tools(pool.pool, subagent), middleware=[middleware])
            result = agent.invoke({"messages": [HumanMessage("Find the flaky tests.")]})
            assert result["messages"][-1].text == "The search runs in the background."
            assert pool.live_count() == 1
            release.set()
            while pool.live_count():
                pool.wait_for_change(timeout=10)
        release.clear()
        assert store.pending_count() == 1
        store.drain_notifications()


def test_two_threads_on_one_store_never_see_each_other_s_results(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return f"result for {request.prompt}"

    def conversation(thread: str) -> RecordingChatModel:
        return scripted(
            call("task", f"call-{thread}", description="job", prompt=thread),
            "Started.",
            "Done.",
        )

    models = {"alice": conversation("alice"), "bob": conversation("bob")}
    with BlockingPool(store) as pool:
        tools = langchain_task_tools(pool.pool, subagent)
        middleware = FollowupMiddleware(store, resume_when_idle=False)
        agents = {name: create_agent(model, tools=tools, middleware=[middleware], checkpointer=InMemorySaver())
                  for name, model in models.items()}
        for name, agent in agents.items():
            agent.invoke({"messages": [HumanMessage("Go.")]}, {"configurable": {"thread_id": name}})
        assert store.session("alice").live_count() == store.session("bob").live_count() == 1
        assert store.live_count() == 0  # nothing in the default session
        release.set()
        for name in agents:
            while store.session(name).live_count():
                pool.call(store.session(name).wait_for_change, 10)
        for name, agent in agents.items():
            agent.invoke({"messages": [HumanMessage("News?")]}, {"configurable": {"thread_id": name}})
    for name, other in (("alice", "bob"), ("bob", "alice")):
        reminder = the_reminder(models[name].inputs[2])
        assert f"result for {name}" in reminder.text and f"result for {other}" not in reminder.text
        assert not store.session(name).has_pending_notifications()


async def test_a_sync_invoke_on_a_thread_running_a_loop_ends_instead_of_blocking_it(store: BackgroundStore) -> None:
    model = scripted(start_search(), "The search runs in the background.")
    subagent = GatedSubagent()
    with trio.fail_after(30):
        async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
            agent = create_agent(model, tools=langchain_task_tools(pool, subagent), middleware=[FollowupMiddleware(store)])
            result = agent.invoke({"messages": [HumanMessage("Find the flaky tests.")]})  # on the pool's own loop
            assert result["messages"][-1].text == "The search runs in the background."
            assert pool.live_count() == 1
            subagent.release()
            assert await store.wait_for_notification()
    assert store.pending_count() == 1


class FlakyReport(BaseModel):
    """The structured answer: how many flaky tests there are."""

    count: int


def report(count: int, call_id: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "FlakyReport", "args": {"count": count}, "id": call_id, "type": "tool_call"}])


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_run_ending_on_a_structured_response_wakes_up_when_a_result_arrives(mode: str, store: BackgroundStore) -> None:
    """Regression: the idle wake-up lived in ``after_model`` and looked for a plain final answer,
    so a run ending on a structured-output tool response ended with the subagent still running."""
    model = scripted(start_search(), report(0, "call-report-1"), report(3, "call-report-2"))
    subagent = GatedSubagent()
    loop: list[Any] = []

    def release_on_the_first_report(number: int) -> None:
        if number == 2:
            loop[0](subagent.release)

    model.on_call = release_on_the_first_report

    async def scenario(invoke: Invoke) -> None:
        token = anyio.lowlevel.current_token()
        loop.append(lambda fn: anyio.from_thread.run_sync(fn, token=token) if mode == "invoke" else fn())
        with anyio.fail_after(30):
            async with SubagentPool(store, id_factory=search_ids().__next__) as pool:
                agent = create_agent(
                    model,
                    tools=langchain_task_tools(pool, subagent),
                    response_format=ToolStrategy(FlakyReport),
                    middleware=[FollowupMiddleware(store)],
                )
                result = await invoke(agent, {"messages": [HumanMessage("Count the flaky tests.")]})
                assert result["structured_response"] == FlakyReport(count=3)

    run_with(mode, scenario)
    assert len(model.inputs) == 3
    assert RESULT in the_reminder(model.inputs[2]).text
    assert not store.has_pending_notifications() and store.leases() == []


def test_a_structured_response_run_without_idle_wake_up_or_past_its_bound_ends_at_once(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return RESULT

    for middleware in (FollowupMiddleware(store, resume_when_idle=False), FollowupMiddleware(store, max_idle_resumes=0)):
        model = scripted(start_search(), report(0, "call-report"))
        with BlockingPool(store) as pool:
            agent = create_agent(
                model,
                tools=langchain_task_tools(pool.pool, subagent),
                response_format=ToolStrategy(FlakyReport),
                middleware=[middleware],
            )
            result = agent.invoke({"messages": [HumanMessage("Count the flaky tests.")]})
            assert result["structured_response"] == FlakyReport(count=0)
            assert pool.live_count() == 1
            release.set()
            while pool.live_count():
                pool.wait_for_change(timeout=10)
        release.clear()
        assert store.pending_count() == 1
        store.drain_notifications()


def test_an_idle_wait_past_its_timeout_ends_the_run_and_leaves_the_result_to_come(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return RESULT

    model = scripted(start_search(), report(0, "call-report"))
    with BlockingPool(store) as pool:
        agent = create_agent(
            model,
            tools=langchain_task_tools(pool.pool, subagent),
            response_format=ToolStrategy(FlakyReport),
            middleware=[FollowupMiddleware(store, idle_timeout=0.05)],
        )
        result = agent.invoke({"messages": [HumanMessage("Count the flaky tests.")]})
        assert result["structured_response"] == FlakyReport(count=0)
        assert len(model.inputs) == 2 and pool.live_count() == 1
        release.set()
        while pool.live_count():
            pool.wait_for_change(timeout=10)
    assert store.pending_count() == 1


def test_a_run_ending_on_a_return_direct_tool_wakes_up_when_a_result_arrives(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent(request: TaskRequest) -> str:
        await anyio.to_thread.run_sync(release.wait)
        return RESULT

    @tool(return_direct=True)
    def publish(summary: str) -> str:
        """Publish the summary to the user and end the turn."""
        release.set()
        return f"published: {summary}"

    model = scripted(start_search(), call("publish", "call-publish", summary="searching"), "There are 3 flaky tests.")
    with BlockingPool(store, id_factory=search_ids().__next__) as pool:
        agent = create_agent(
            model, tools=[*langchain_task_tools(pool.pool, subagent), publish], middleware=[FollowupMiddleware(store)]
        )
        result = agent.invoke({"messages": [HumanMessage("Find the flaky tests.")]})
    assert result["messages"][-1].text == "There are 3 flaky tests."
    assert len(model.inputs) == 3
    assert model.inputs[2][-2].text == "published: searching"
    assert RESULT in the_reminder(model.inputs[2]).text
    assert not store.has_pending_notifications() and store.leases() == []
