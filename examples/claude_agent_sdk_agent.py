"""Background subagents in a Claude Agent SDK session.

``ClaudeFollowups`` gives Claude the ``task`` / ``task_status`` / ``cancel_task`` tools through an
in-process MCP server, and hooks ``UserPromptSubmit``, ``PostToolUse`` and ``PostToolUseFailure``:
when a subagent has finished, the next of these hooks returns its result as
``additionalContext``, which Claude Code adds to the user turn of the next model call.

This runs offline: ``ScriptedClaudeCode`` is a ``Transport`` that plays Claude Code's side of the
SDK's control protocol with a scripted model, and prints each model call's input. The model
starts the tests in the background, then reads the README; the tests finish while the read
runs, so the reminder arrives with the README's tool result, once. With the real Claude Code,
pass ``followups.cli_transport(options)`` instead.

Run it (offline, under a second):

    python examples/claude_agent_sdk_agent.py
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import trio
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage, Transport

from followups import BackgroundStore, FollowupSettings, SubagentPool, TaskRequest
from followups.adapters.claude_agent_sdk import ClaudeFollowups

Frame = dict[str, Any]


class ScriptedClaudeCode(Transport):
    """Claude Code's side of the SDK's stream-JSON control protocol, over memory streams."""

    def __init__(self) -> None:
        self._to_sdk, self._from_cli = anyio.create_memory_object_stream[Frame](100)
        self._prompt_sink, self._prompts = anyio.create_memory_object_stream[str](100)
        self._answered: dict[str, anyio.Event] = {}
        self._answers: dict[str, Frame] = {}
        self._ids = itertools.count(1)
        self._hook_ids: dict[str, list[str]] = {}
        self._ready = False
        self.model_calls = 0

    async def connect(self) -> None:
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    async def write(self, data: str) -> None:
        frame = json.loads(data)
        if frame["type"] == "control_request":  # the SDK's initialize: remember its hook callbacks
            for event, matchers in (frame["request"]["hooks"] or {}).items():
                self._hook_ids[event] = [callback for matcher in matchers for callback in matcher["hookCallbackIds"]]
            answer = {"subtype": "success", "request_id": frame["request_id"], "response": {}}
            self._to_sdk.send_nowait({"type": "control_response", "response": answer})
        elif frame["type"] == "control_response":  # the SDK answers one of our requests
            response = frame["response"]
            self._answers[response["request_id"]] = response
            self._answered.pop(response["request_id"]).set()
        elif frame["type"] == "user":
            self._prompt_sink.send_nowait(frame["message"]["content"])

    def read_messages(self) -> AsyncIterator[Frame]:
        return self._read()

    async def _read(self) -> AsyncIterator[Frame]:
        async for frame in self._from_cli:
            yield frame

    async def end_input(self) -> None:
        self._prompt_sink.close()

    async def close(self) -> None:
        for stream in (self._to_sdk, self._from_cli, self._prompt_sink, self._prompts):
            stream.close()

    async def _request(self, payload: Frame) -> Frame:
        request_id = f"cli_{next(self._ids)}"
        self._answered[request_id] = anyio.Event()
        await self._to_sdk.send({"type": "control_request", "request_id": request_id, "request": payload})
        await self._answered[request_id].wait()
        return self._answers.pop(request_id)

    async def _hooks(self, event: str, fields: Frame) -> list[str]:
        contexts = []
        hook_input = {"session_id": "example", "transcript_path": "transcript.jsonl", "cwd": ".", **fields}
        for callback_id in self._hook_ids.get(event, []):
            hook_input["hook_event_name"] = event
            answer = await self._request({"subtype": "hook_callback", "callback_id": callback_id, "input": hook_input})
            output = answer.get("response", {}).get("hookSpecificOutput", {})
            contexts += [output["additionalContext"]] if "additionalContext" in output else []
        return contexts

    def _model_call(self, label: str, parts: list[str]) -> None:
        self.model_calls += 1
        print(f"=== model input {self.model_calls} ({label}) ===")
        print("\n".join(parts))

    async def _emit(self, role: str, block: Frame) -> None:
        message: Frame = {"role": role, "content": [block]}
        if role == "assistant":
            message["model"] = "scripted"
        await self._to_sdk.send({"type": role, "message": message, "parent_tool_use_id": None})

    async def user_turn(self) -> None:
        prompt = await self._prompts.receive()
        self._model_call("the prompt", [prompt, *await self._hooks("UserPromptSubmit", {"prompt": prompt})])

    async def tool_call(self, tool_use_id: str, name: str, arguments: Frame, run: Callable[[], Awaitable[str]]) -> None:
        """The model calls ``name``; Claude Code runs it (``run``), reports its output and runs the
        PostToolUse hooks before the next model call."""
        await self._emit("assistant", {"type": "tool_use", "id": tool_use_id, "name": name, "input": arguments})
        output = await run()
        await self._emit("user", {"type": "tool_result", "tool_use_id": tool_use_id, "content": output})
        fields = {"tool_name": name, "tool_input": arguments, "tool_response": output, "tool_use_id": tool_use_id}
        self._model_call(
            f"after the {name.split('__')[-1]} tool's result", [output, *await self._hooks("PostToolUse", fields)]
        )

    async def run_task_tool(self, arguments: Frame) -> str:
        """Claude Code runs ``mcp__followups__task`` on the SDK's in-process MCP server."""
        hello = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "scripted", "version": "0"},
        }
        for message in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "task", "arguments": arguments}},
        ):
            answer = await self._request({"subtype": "mcp_message", "server_name": "followups", "message": message})
        text: str = answer["response"]["mcp_response"]["result"]["content"][0]["text"]
        return text

    async def answer(self, text: str) -> None:
        await self._emit("assistant", {"type": "text", "text": text})
        await self._to_sdk.send(
            {
                "type": "result",
                "subtype": "success",
                "duration_ms": 1,
                "duration_api_ms": 1,
                "is_error": False,
                "num_turns": 1,
                "session_id": "example",
                "result": text,
            }
        )

    def exit(self) -> None:
        self._to_sdk.close()


async def play_claude_code(claude: ScriptedClaudeCode, store: BackgroundStore, reading: trio.Event) -> None:
    """The scripted model and the Claude Code session around it."""
    await claude.user_turn()
    arguments = {"description": "run the tests", "prompt": "Run the whole test suite and report failures."}
    await claude.tool_call("toolu_1", "mcp__followups__task", arguments, lambda: claude.run_task_tool(arguments))

    async def read_readme() -> str:
        reading.set()
        await store.wait_for_notification()  # the read takes a while: the tests finish meanwhile
        return "# demo\nA small demo project."

    await claude.tool_call("toolu_2", "Read", {"file_path": "README.md"}, read_readme)
    await claude.answer("The tests passed (120 of them), and the README describes a small demo project.")
    await claude.user_turn()
    await claude.answer("No, nothing else is running.")
    claude.exit()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        reading = trio.Event()

        async def run_tests(request: TaskRequest) -> str:
            await reading.wait()  # the subagent works until the model is busy reading the README
            return f"{request.description}: 120 passed"

        async with SubagentPool(store) as pool, trio.open_nursery() as nursery:
            followups = ClaudeFollowups(pool, run_tests)
            options = followups.options(ClaudeAgentOptions(system_prompt="You are a careful engineer."))
            claude = ScriptedClaudeCode()
            nursery.start_soon(play_claude_code, claude, store, reading)
            prompts = ["Run the tests in the background and tell me what the README says.", "Anything else running?"]
            async with ClaudeSDKClient(options, transport=followups.transport(claude)) as client:
                await client.query(prompts.pop(0))
                async for message in client.receive_messages():
                    if isinstance(message, ResultMessage) and prompts:
                        await client.query(prompts.pop(0))
        print(f"\npending notifications after the session: {store.pending_count()}")


if __name__ == "__main__":
    trio.run(main)
