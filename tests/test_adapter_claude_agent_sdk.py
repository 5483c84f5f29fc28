"""The Claude Agent SDK adapter in real SDK sessions, offline.

``ScriptedClaudeCode`` is a ``Transport`` that plays Claude Code's side of the SDK's stream-JSON
control protocol: it answers the SDK's ``initialize`` request, reads the user prompts, runs the
hook callbacks the SDK registered (``hook_callback`` control requests), calls the in-process MCP
tools (``mcp_message`` control requests carrying JSON-RPC), and emits assistant, tool-result and
result messages. A scenario coroutine plays the model: ``model_inputs`` records the user turn
each model call receives, that is the prompt or the tool result plus the ``additionalContext``
the hooks returned.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("claude_agent_sdk")

import anyio
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    HookMatcher,
    ResultMessage,
    TextBlock,
    Transport,
)

from followups import BackgroundStore, FollowupSettings, Session, SubagentPool, TaskRequest, TaskState, take_followup
from followups.adapters.claude_agent_sdk import REMINDER_EVENTS, ClaudeFollowups, FollowupTransport

SESSION = "scripted-session"


@pytest.fixture
def store(settings: FollowupSettings) -> Session:
    """The followups session of the scripted Claude session: the adapter maps the Claude
    ``session_id`` every hook input carries to ``store.session(session_id)``."""
    return BackgroundStore(settings).session(SESSION)
Frame = dict[str, Any]
Scenario = Callable[["ScriptedClaudeCode", Session, anyio.Event], Awaitable[None]]


class ScriptedClaudeCode(Transport):
    """Claude Code's side of the SDK control protocol, driven by a scenario coroutine.

    ``failing_reminder_writes``: that many writes of a hook response carrying
    ``additionalContext`` raise ``CLIConnectionError``, as a broken stdin pipe would.
    """

    def __init__(self, *, failing_reminder_writes: int = 0, session_id: str = SESSION) -> None:
        self.session_id = session_id
        self._to_sdk, self._from_cli = anyio.create_memory_object_stream[Frame](100)
        self._prompt_sink, self._prompts = anyio.create_memory_object_stream[str](100)
        self._waiting: dict[str, anyio.Event] = {}
        self._answers: dict[str, Frame] = {}
        self._ids = itertools.count(1)
        self._mcp_started: set[str] = set()
        self._ready = False
        self.failing_reminder_writes = failing_reminder_writes
        self.failed_writes: list[str] = []
        self.hook_callback_ids: dict[str, list[str]] = {}
        self.hook_errors: list[str] = []
        self.model_inputs: list[list[str]] = []
        self.subagent_contexts: list[str] = []

    # -- the Transport the SDK uses ------------------------------------------------------

    async def connect(self) -> None:
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    async def write(self, data: str) -> None:
        frame = json.loads(data)
        if frame["type"] == "control_request":
            self._answer_sdk_request(frame)
        elif frame["type"] == "control_response":
            if self.failing_reminder_writes and "additionalContext" in data:
                self.failing_reminder_writes -= 1
                self.failed_writes.append(data)
                raise CLIConnectionError("Failed to write to process stdin: broken pipe")
            response = frame["response"]
            self._answers[response["request_id"]] = response
            self._waiting.pop(response["request_id"]).set()
        elif frame["type"] == "user":
            self._prompt_sink.send_nowait(frame["message"]["content"])
        else:
            raise AssertionError(f"unexpected frame from the SDK: {frame}")

    def read_messages(self) -> AsyncIterator[Frame]:
        return self._read()

    async def _read(self) -> AsyncIterator[Frame]:
        async for frame in self._from_cli:
            yield frame

    def exit(self) -> None:
        """Claude Code exits: its output stream ends."""
        self._to_sdk.close()

    async def end_input(self) -> None:
        self._prompt_sink.close()

    async def close(self) -> None:
        self._ready = False
        for stream in (self._to_sdk, self._from_cli, self._prompt_sink, self._prompts):
            stream.close()

    def _answer_sdk_request(self, frame: Frame) -> None:
        request = frame["request"]
        assert request["subtype"] == "initialize", request
        for event, matchers in (request["hooks"] or {}).items():
            self.hook_callback_ids[event] = [
                callback for matcher in matchers for callback in matcher["hookCallbackIds"]
            ]
        answer = {"subtype": "success", "request_id": frame["request_id"], "response": {"commands": []}}
        self._to_sdk.send_nowait({"type": "control_response", "response": answer})

    # -- Claude Code's behaviour, for the scenarios ---------------------------------------

    async def emit(self, frame: Frame) -> None:
        await self._to_sdk.send(frame)

    async def request(self, payload: Frame) -> Frame:
        """Send a control request to the SDK and wait for its answer."""
        request_id = f"cli_{next(self._ids)}"
        answered = anyio.Event()
        self._waiting[request_id] = answered
        await self._to_sdk.send({"type": "control_request", "request_id": request_id, "request": payload})
        await answered.wait()
        return self._answers.pop(request_id)

    async def run_hooks(self, event: str, fields: Frame, tool_use_id: str | None = None) -> list[str]:
        """Run every callback registered for ``event``; return the additionalContext they gave."""
        hook_input = {"session_id": self.session_id, "transcript_path": "transcript.jsonl", "cwd": ".", **fields}
        hook_input["hook_event_name"] = event
        contexts: list[str] = []
        for callback_id in self.hook_callback_ids.get(event, []):
            answer = await self.request(
                {
                    "subtype": "hook_callback",
                    "callback_id": callback_id,
                    "input": hook_input,
                    "tool_use_id": tool_use_id,
                }
            )
            if answer["subtype"] == "error":
                self.hook_errors.append(answer["error"])
                continue
            output = answer["response"].get("hookSpecificOutput", {})
            if "additionalContext" in output:
                assert output["hookEventName"] == event
                contexts.append(output["additionalContext"])
        return contexts

    async def user_turn(self) -> str:
        """Read the next prompt, run UserPromptSubmit, record the model's input."""
        prompt = await self._prompts.receive()
        contexts = await self.run_hooks("UserPromptSubmit", {"prompt": prompt})
        self.model_inputs.append([prompt, *contexts])
        return prompt

    async def call_mcp_tool(self, tool_use_id: str, tool: str, arguments: Frame) -> Frame:
        """The model calls ``mcp__followups__<tool>``: Claude Code runs it on the SDK's MCP server
        and reports the result back; returns the MCP result."""
        await self.emit(
            assistant({"type": "tool_use", "id": tool_use_id, "name": f"mcp__followups__{tool}", "input": arguments})
        )
        if "followups" not in self._mcp_started:
            handshake = {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "scripted", "version": "0"},
            }
            await self._mcp({"jsonrpc": "2.0", "id": next(self._ids), "method": "initialize", "params": handshake})
            await self._mcp({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._mcp_started.add("followups")
        call = {"name": tool, "arguments": arguments}
        result: Frame = (
            await self._mcp({"jsonrpc": "2.0", "id": next(self._ids), "method": "tools/call", "params": call})
        )["result"]
        text = "".join(block["text"] for block in result["content"])
        await self.emit(tool_result(tool_use_id, text, result.get("isError", False)))
        return result

    async def after_tool(self, event: str, tool_use_id: str, tool_name: str, result_text: str, **fields: Any) -> None:
        """Run the post-tool hooks of a main-thread tool call; record the model's next input."""
        contexts = await self.run_hooks(
            event, {"tool_name": tool_name, "tool_input": {}, "tool_use_id": tool_use_id, **fields}, tool_use_id
        )
        self.model_inputs.append([result_text, *contexts])

    async def answer(self, text: str) -> None:
        """The model ends its turn with ``text``."""
        await self.emit(assistant({"type": "text", "text": text}))
        await self.emit(
            {
                "type": "result",
                "subtype": "success",
                "duration_ms": 1,
                "duration_api_ms": 1,
                "is_error": False,
                "num_turns": 1,
                "session_id": self.session_id,
                "result": text,
            }
        )

    async def _mcp(self, message: Frame) -> Frame:
        answer = await self.request({"subtype": "mcp_message", "server_name": "followups", "message": message})
        assert answer["subtype"] == "success", answer
        response: Frame = answer["response"]["mcp_response"]
        return response


def assistant(block: Frame) -> Frame:
    return {
        "type": "assistant",
        "message": {"role": "assistant", "model": "scripted", "content": [block]},
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }


def tool_result(tool_use_id: str, text: str, is_error: bool) -> Frame:
    block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text, "is_error": is_error}
    return {
        "type": "user",
        "message": {"role": "user", "content": [block]},
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }


def reminders_in(model_input: list[str]) -> int:
    """Reminder blocks in one model input (the task tool's own text names the opening tag)."""
    return sum(part.count("</system-reminder>") for part in model_input)


async def run_session(
    store: Session, cli: ScriptedClaudeCode, scenario: Scenario, prompts: list[str], *, wrap: bool = True
) -> list[Any]:
    """A ClaudeSDKClient session over ``cli`` with the followups hooks and tools; the subagent
    finishes once ``release`` is set. Returns the messages the client received."""
    release = anyio.Event()

    async def run_subagent(request: TaskRequest) -> str:
        await release.wait()
        return f"{request.description}: 120 passed"

    async def play_claude_code() -> None:
        await scenario(cli, store, release)
        cli.exit()

    received: list[Any] = []
    async with SubagentPool(store) as pool:
        followups = ClaudeFollowups(pool, run_subagent)
        options = followups.options(ClaudeAgentOptions(system_prompt="You are a careful engineer."))
        transport: Transport = followups.transport(cli) if wrap else cli
        with anyio.fail_after(20):
            async with anyio.create_task_group() as session:
                session.start_soon(play_claude_code)
                async with ClaudeSDKClient(options, transport=transport) as client:
                    waiting = list(prompts)
                    await client.query(waiting.pop(0))
                    # Read until Claude Code exits, so the SDK's message generators run to their end.
                    async for message in client.receive_messages():
                        received.append(message)
                        if isinstance(message, ResultMessage) and waiting:
                            await client.query(waiting.pop(0))
    return received


async def subagent_finishes_before_the_tool_hooks(
    cli: ScriptedClaudeCode, store: Session, release: anyio.Event
) -> None:
    """Turn 1: the model starts a background task; it finishes while Claude Code runs the tool,
    so the tool's PostToolUse hooks see it. Turn 2: a new prompt."""
    await cli.user_turn()
    result = await cli.call_mcp_tool(
        "toolu_1", "task", {"description": "run the tests", "prompt": "Run the test suite."}
    )
    release.set()
    await store.wait_for_notification()
    # A tool call inside one of Claude Code's own subagents fires PostToolUse too; it must not
    # take the reminder, which belongs to the main conversation.
    subagent_tool = {"tool_name": "Read", "tool_input": {}, "tool_use_id": "toolu_sub", "agent_id": "agent-7"}
    cli.subagent_contexts += await cli.run_hooks("PostToolUse", subagent_tool)
    await cli.after_tool(
        "PostToolUse", "toolu_1", "mcp__followups__task", result["content"][0]["text"], tool_response=result
    )
    await cli.answer("Started the tests; they already passed.")
    await cli.user_turn()
    await cli.answer("Nothing else is running.")


def assert_delivered_once(cli: ScriptedClaudeCode, call_with_reminder: int, task_id: str) -> None:
    for index, model_input in enumerate(cli.model_inputs):
        expected = 1 if index == call_with_reminder else 0
        assert reminders_in(model_input) == expected, (index, model_input)
    reminder = cli.model_inputs[call_with_reminder][-1]
    assert reminder.startswith("<system-reminder>")
    assert f"[task {task_id}] completed: run the tests: 120 passed" in reminder
    assert sum(part.count("120 passed") for model_input in cli.model_inputs for part in model_input) == 1


def started_task_id(cli: ScriptedClaudeCode) -> str:
    tool_output = cli.model_inputs[1][0]
    assert tool_output.startswith("Started background task ")
    return tool_output.removeprefix("Started background task ").split(" ")[0]


async def test_reminder_rides_the_next_tool_hook_once_and_never_again(store: Session) -> None:
    cli = ScriptedClaudeCode()
    received = await run_session(
        store, cli, subagent_finishes_before_the_tool_hooks, ["Run the tests.", "Anything else?"]
    )

    # calls: prompt 1, after the task tool's result, prompt 2
    assert [cli.model_inputs[0][0], cli.model_inputs[2][0]] == ["Run the tests.", "Anything else?"]
    assert_delivered_once(cli, call_with_reminder=1, task_id=started_task_id(cli))
    assert cli.subagent_contexts == []
    assert cli.hook_errors == []
    assert not store.has_pending_notifications()
    assert [type(message) for message in received if isinstance(message, ResultMessage)] == [ResultMessage] * 2
    texts = [
        block.text
        for message in received
        if isinstance(message, AssistantMessage)
        for block in message.content
        if isinstance(block, TextBlock)
    ]
    assert texts == ["Started the tests; they already passed.", "Nothing else is running."]


def test_reminder_is_delivered_once_under_asyncio(store: Session) -> None:
    cli = ScriptedClaudeCode()

    async def main() -> list[Any]:
        return await run_session(
            store, cli, subagent_finishes_before_the_tool_hooks, ["Run the tests.", "Anything else?"]
        )

    anyio.run(main, backend="asyncio")
    assert_delivered_once(cli, call_with_reminder=1, task_id=started_task_id(cli))
    assert not store.has_pending_notifications()


async def test_failed_hook_response_write_gives_the_reminder_back_for_the_next_prompt(store: Session) -> None:
    cli = ScriptedClaudeCode(failing_reminder_writes=1)
    await run_session(store, cli, subagent_finishes_before_the_tool_hooks, ["Run the tests.", "Anything else?"])

    # The response carrying the reminder never reached Claude Code: the SDK reported the failed
    # write as a hook error, and the tool result went to the model without it.
    assert len(cli.failed_writes) == 1 and "120 passed" in cli.failed_writes[0]
    assert cli.hook_errors == ["Failed to write to process stdin: broken pipe"]
    assert_delivered_once(cli, call_with_reminder=2, task_id=started_task_id(cli))
    assert cli.model_inputs[2][0] == "Anything else?"
    assert not store.has_pending_notifications()


async def test_failed_tool_hook_carries_a_reminder_that_arrived_after_the_task_call(store: Session) -> None:
    async def scenario(cli: ScriptedClaudeCode, store: Session, release: anyio.Event) -> None:
        await cli.user_turn()
        result = await cli.call_mcp_tool("toolu_1", "task", {"description": "run the tests", "prompt": "Run them."})
        await cli.after_tool("PostToolUse", "toolu_1", "mcp__followups__task", result["content"][0]["text"])
        release.set()
        await store.wait_for_notification()
        # The model's next tool is one of Claude Code's own, and it fails.
        await cli.emit(assistant({"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "false"}}))
        await cli.emit(tool_result("toolu_2", "Exit code 1", True))
        await cli.after_tool("PostToolUseFailure", "toolu_2", "Bash", "Exit code 1", error="Exit code 1")
        await cli.answer("The tests passed; the command failed.")

    cli = ScriptedClaudeCode()
    await run_session(store, cli, scenario, ["Run the tests and then `false`."])

    assert [reminders_in(model_input) for model_input in cli.model_inputs] == [0, 0, 1]
    assert cli.model_inputs[2][0] == "Exit code 1"
    assert "run the tests: 120 passed" in cli.model_inputs[2][1]
    assert not store.has_pending_notifications()


async def test_task_tools_are_served_over_mcp_with_their_errors(store: Session) -> None:
    outputs: dict[str, Any] = {}

    async def scenario(cli: ScriptedClaudeCode, store: Session, release: anyio.Event) -> None:
        await cli.user_turn()
        outputs["invalid"] = await cli.call_mcp_tool("toolu_1", "task", {"description": "", "prompt": "x"})
        started = await cli.call_mcp_tool("toolu_2", "task", {"description": "lint", "prompt": "Lint it."})
        task_id = started["content"][0]["text"].removeprefix("Started background task ").split(" ")[0]
        outputs["status"] = await cli.call_mcp_tool("toolu_3", "task_status", {"task_id": task_id})
        outputs["cancel"] = await cli.call_mcp_tool("toolu_4", "cancel_task", {"task_id": task_id})
        outputs["unknown"] = await cli.call_mcp_tool("toolu_5", "task_status", {"task_id": "nope"})
        await cli.answer("Done.")

    await run_session(store, ScriptedClaudeCode(), scenario, ["Lint, then cancel it."])

    texts = {name: result["content"][0]["text"] for name, result in outputs.items()}
    errors = {name: result.get("isError", False) for name, result in outputs.items()}
    assert errors == {"invalid": True, "status": False, "cancel": False, "unknown": True}
    assert "Input validation error" in texts["invalid"]
    assert "is still running" in texts["status"]
    assert "is being cancelled" in texts["cancel"]
    assert "No task 'nope' is known" in texts["unknown"]


async def test_without_the_followup_transport_the_hook_fails_loudly_and_drains_nothing(store: Session) -> None:
    store.insert("t1", description="lint")
    store.notify("t1", TaskState.completed("lint: clean"))

    async def scenario(cli: ScriptedClaudeCode, store: Session, release: anyio.Event) -> None:
        await cli.user_turn()
        await cli.answer("Hello.")

    cli = ScriptedClaudeCode()
    await run_session(store, cli, scenario, ["Hi."], wrap=False)

    assert reminders_in(cli.model_inputs[0]) == 0
    assert len(cli.hook_errors) == 1 and "FollowupTransport" in cli.hook_errors[0]
    assert store.has_pending_notifications()


async def test_closing_gives_back_reminders_whose_response_was_never_written(store: Session) -> None:
    async def never_called(request: TaskRequest) -> str:
        raise AssertionError("no subagent runs in this test")

    store.insert("t1")
    store.notify("t1", TaskState.completed("one"))
    async with SubagentPool(store) as pool:
        followups = ClaudeFollowups(pool, never_called)
        transport = followups.transport(ScriptedClaudeCode())
        await transport.connect()
        second = followups.transport(ScriptedClaudeCode())
        with pytest.raises(RuntimeError, match="already serves a connected session"):
            await second.connect()
        await second.close()
        delivery = take_followup(store)
        assert delivery is not None
        transport.hand_off(delivery)
        await transport.close()
        assert [notification.id for notification in store.drain_notifications()] == ["t1"]
        third = followups.transport(ScriptedClaudeCode())
        await third.connect()  # the closed transport no longer holds the session
        await third.close()


async def test_options_keep_the_users_settings_and_add_hooks_tools_and_server(store: Session) -> None:
    async def user_hook(hook_input: Any, tool_use_id: str | None, context: Any) -> Any:
        return {}

    async def never_called(request: TaskRequest) -> str:
        raise AssertionError("no subagent runs in this test")

    async with SubagentPool(store) as pool:
        followups = ClaudeFollowups(pool, never_called)
        base = ClaudeAgentOptions(
            allowed_tools=["Read"], hooks={"PostToolUse": [HookMatcher(matcher="Bash", hooks=[user_hook])]}
        )
        options = followups.options(base)
        assert options.allowed_tools == [
            "Read",
            "mcp__followups__task",
            "mcp__followups__task_status",
            "mcp__followups__list_tasks",
            "mcp__followups__cancel_task",
            "mcp__followups__send_message",
        ]
        assert options.hooks is not None and set(options.hooks) == set(REMINDER_EVENTS)
        assert options.hooks["PostToolUse"][0].hooks == [user_hook]
        assert [matcher.hooks for matcher in options.hooks["UserPromptSubmit"]] == [[followups.deliver_reminder]]
        assert isinstance(options.mcp_servers, dict) and options.mcp_servers["followups"]["type"] == "sdk"
        assert base.allowed_tools == ["Read"] and base.mcp_servers == {}  # the base is left alone

        with pytest.raises(ValueError, match="already has a server named 'followups'"):
            followups.options(options)
        with pytest.raises(ValueError, match="config file path"):
            followups.options(ClaudeAgentOptions(mcp_servers="servers.json"))
        with pytest.raises(ValueError, match="server_name"):
            ClaudeFollowups(pool, never_called, server_name="has space")
        with pytest.raises(TypeError, match="run_subagent must be an async callable"):
            ClaudeFollowups(pool, "not a function")  # type: ignore[arg-type]

        transport = followups.cli_transport(options)
        assert isinstance(transport, FollowupTransport)
        assert type(transport.inner).__name__ == "SubprocessCLITransport"
        assert not transport.is_ready()  # built, not started: connect() spawns Claude Code


def test_example_prints_the_model_input_with_the_reminder_once(run_example: Callable[[str], str]) -> None:
    out = run_example("claude_agent_sdk_agent.py")
    calls = out.split("=== model input ")[1:]
    assert [call.split(" ===")[0] for call in calls] == [
        "1 (the prompt)",
        "2 (after the task tool's result)",
        "3 (after the Read tool's result)",
        "4 (the prompt)",
    ]
    assert [call.count("</system-reminder>") for call in calls] == [0, 0, 1, 0]
    assert calls[2].count("completed: run the tests: 120 passed") == 1
    assert out.rstrip().endswith("pending notifications after the session: 0")


# -- idle wake-up and sessions ----------------------------------------------------------------

# ClaudeSDKClient.receive_messages iterates the SDK's inner generator without closing it, so
# stopping at a ResultMessage (as the SDK's own receive_response does) leaves that one to the
# garbage collector, which trio reports as a ResourceWarning. It holds nothing of ours.
SDK_GENERATOR_WARNING = "ignore:Async generator 'claude_agent_sdk:ResourceWarning"
SDK_GENERATOR_UNRAISABLE = (
    "ignore:Exception ignored in. <async_generator object .*receive_messages:pytest.PytestUnraisableExceptionWarning"
)


async def play(
    followups_store: Session, cli: ScriptedClaudeCode, scenario: Callable[[anyio.Event], Awaitable[None]], **options: Any
) -> list[Any]:
    """One ClaudeSDKClient session over ``cli`` whose responses are read with
    ``ClaudeFollowups.receive_response`` (idle wake-up); the subagent finishes once the
    scenario sets the event it gets."""
    release = anyio.Event()

    async def run_subagent(request: TaskRequest) -> str:
        await release.wait()
        return f"{request.description}: 120 passed"

    async def play_claude_code() -> None:
        await scenario(release)
        cli.exit()

    received: list[Any] = []
    async with SubagentPool(followups_store) as pool:
        followups = ClaudeFollowups(pool, run_subagent, **options)
        options_ = followups.options(ClaudeAgentOptions())
        with anyio.fail_after(20):
            async with anyio.create_task_group() as session:
                session.start_soon(play_claude_code)
                async with ClaudeSDKClient(options_, transport=followups.transport(cli)) as client:
                    await client.query("Run the tests.")
                    async for message in followups.receive_response(client):
                        received.append(message)
    return received


@pytest.mark.filterwarnings(SDK_GENERATOR_WARNING)
@pytest.mark.filterwarnings(SDK_GENERATOR_UNRAISABLE)
async def test_a_result_after_the_final_answer_is_sent_as_a_follow_up_query(store: Session) -> None:
    cli = ScriptedClaudeCode()

    async def scenario(release: anyio.Event) -> None:
        await cli.user_turn()
        result = await cli.call_mcp_tool("toolu_1", "task", {"description": "run the tests", "prompt": "Run them."})
        await cli.after_tool("PostToolUse", "toolu_1", "mcp__followups__task", result["content"][0]["text"])
        await cli.answer("Started the tests.")
        release.set()  # the subagent finishes after the final answer, with no user input
        await cli.user_turn()
        await cli.answer("The tests passed.")

    received = await play(store, cli, scenario)
    follow_up = cli.model_inputs[2]
    assert follow_up[0].startswith("<system-reminder>") and "run the tests: 120 passed" in follow_up[0]
    assert sum(reminders_in(model_input) for model_input in cli.model_inputs) == 1
    assert [m.result for m in received if isinstance(m, ResultMessage)] == ["Started the tests.", "The tests passed."]
    assert not store.has_pending_notifications() and store.leases() == []


@pytest.mark.filterwarnings(SDK_GENERATOR_WARNING)
@pytest.mark.filterwarnings(SDK_GENERATOR_UNRAISABLE)
async def test_without_idle_wake_up_the_turn_ends_and_the_result_waits(store: Session) -> None:
    cli = ScriptedClaudeCode()

    async def scenario(release: anyio.Event) -> None:
        await cli.user_turn()
        result = await cli.call_mcp_tool("toolu_1", "task", {"description": "run the tests", "prompt": "Run them."})
        await cli.after_tool("PostToolUse", "toolu_1", "mcp__followups__task", result["content"][0]["text"])
        await cli.answer("Started the tests.")
        release.set()
        await store.wait_for_notification()

    received = await play(store, cli, scenario, resume_when_idle=False)
    assert [m.result for m in received if isinstance(m, ResultMessage)] == ["Started the tests."]
    assert store.pending_count() == 1


@pytest.mark.filterwarnings(SDK_GENERATOR_WARNING)
@pytest.mark.filterwarnings(SDK_GENERATOR_UNRAISABLE)
async def test_two_claude_sessions_on_one_store_stay_apart(settings: FollowupSettings) -> None:
    shared = BackgroundStore(settings)
    alice = ScriptedClaudeCode(session_id="alice")

    async def alice_starts_a_task(release: anyio.Event) -> None:
        await alice.user_turn()
        result = await alice.call_mcp_tool("toolu_1", "task", {"description": "run the tests", "prompt": "Run them."})
        release.set()
        await shared.session("alice").wait_for_notification()
        await alice.after_tool("PostToolUse", "toolu_1", "mcp__followups__task", result["content"][0]["text"])
        await alice.answer("Done.")

    bob = ScriptedClaudeCode(session_id="bob")

    async def bob_asks(release: anyio.Event) -> None:
        await bob.user_turn()
        await bob.answer("Hello.")

    await play(shared, alice, alice_starts_a_task)
    shared.session("alice").insert("late")
    shared.session("alice").notify("late", TaskState.completed("alice's late result"))
    await play(shared, bob, bob_asks)
    assert reminders_in(alice.model_inputs[1]) == 1 and "120 passed" in alice.model_inputs[1][-1]
    assert sum(reminders_in(model_input) for model_input in bob.model_inputs) == 0
    assert shared.session("alice").pending_count() == 1  # still alice's, untouched by bob
    assert shared.pending_count() == 0 and shared.session("bob").pending_count() == 0
