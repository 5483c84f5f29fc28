"""A hand-written Anthropic Messages API agent loop that runs subagents in the background.

The model gets the ``task`` tool (``followups.task_tools`` as Anthropic ``ToolParam``s). It
starts a subagent and ends its turn; the loop sleeps until the subagent reports, then calls the
model again. ``reminder_for_call`` puts the result into that call's messages as a
``<system-reminder>`` text block in a user turn, and keeps it there once the call succeeds (had
the call failed, it would have been taken out and kept pending for the next call).

The real ``AsyncAnthropic`` client is used, but its HTTP transport is an ``httpx2.MockTransport``
that plays the model, so this runs offline with no API key. Run it:

    python examples/anthropic_messages_agent.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx2
import trio
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from followups import BackgroundStore, FollowupSettings, SubagentPool, TaskRequest, Tool, task_tools
from followups.adapters.anthropic_messages import reminder_for_call, run_tool_uses, tool_params

MODEL = "claude-example"  # any name will do: the transport below plays the model


class FakeMessagesAPI:
    """Answers POST /v1/messages like a model would, from the last user turn, and keeps every
    request body: exactly what the model would have received."""

    def __init__(self, model_replied: trio.Event) -> None:
        self.model_replied = model_replied
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        content = body["messages"][-1]["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        reply: list[dict[str, Any]]
        if any(block.get("text", "").startswith("<system-reminder>") for block in blocks):
            reply = [{"type": "text", "text": "The scan is done: 3 TODO comments, all in cli.py."}]
        elif blocks[0]["type"] == "tool_result":
            self.model_replied.set()
            reply = [{"type": "text", "text": "The scan runs in the background; I will report when it is done."}]
        elif "TODO" in blocks[0].get("text", ""):
            scan = {"description": "scan TODOs", "prompt": "List the TODO comments in the repository."}
            reply = [{"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": "task", "input": scan}]
        else:
            reply = [{"type": "text", "text": "You're welcome."}]
        stop_reason = "tool_use" if reply[0]["type"] == "tool_use" else "end_turn"
        return httpx2.Response(
            200,
            json={
                "id": f"msg_{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": reply,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 20},
            },
        )


async def run_agent(
    client: AsyncAnthropic, store: BackgroundStore, tools: list[Tool], messages: list[MessageParam]
) -> None:
    """The loop: call the model with pending results, run its tools, and when its turn ends
    while subagents still run, sleep until one reports and call it again."""
    while True:
        with reminder_for_call(store, messages):
            response = await client.messages.create(
                model=MODEL, max_tokens=1024, tools=tool_params(tools), messages=messages
            )
        messages.append(response.to_param())
        said = " ".join(block.text for block in response.content if block.type == "text")
        print(f"assistant: {said or '[tool use]'}")
        if response.stop_reason == "tool_use":
            messages.append({"role": "user", "content": await run_tool_uses(tools, response)})
            continue
        if not store.has_pending_notifications():
            if store.live_count() == 0:
                return
            print("(turn over, a subagent still running: sleeping until it reports)")
            await store.wait_for_notification()


async def main() -> None:
    model_replied = trio.Event()

    async def scan_subagent(request: TaskRequest) -> str:
        await model_replied.wait()  # finish after the model's reply, so every run prints the same
        return "3 TODO comments: cli.py lines 12, 40 and 88."

    api = FakeMessagesAPI(model_replied)
    http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(api.handle))
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        messages: list[MessageParam] = [{"role": "user", "content": "Scan the repository for TODO comments."}]
        async with AsyncAnthropic(api_key="offline", http_client=http_client, max_retries=0) as client:
            async with SubagentPool(store) as pool:
                tools = task_tools(pool, scan_subagent)
                await run_agent(client, store, tools, messages)
                messages.append({"role": "user", "content": "Thanks!"})
                await run_agent(client, store, tools, messages)

    counts = []
    for body in api.requests:
        blocks = [block for m in body["messages"] if isinstance(m["content"], list) for block in m["content"]]
        counts.append(sum(block.get("text", "").startswith("<system-reminder>") for block in blocks))
    carrier = counts.index(1)
    print(f"\n=== model call {carrier + 1}: the input that carries the reminder ===")
    print(json.dumps(api.requests[carrier]["messages"], indent=2))
    print(f"\nreminder blocks per model call: {counts}")
    print("(the last call carries the reminder once, as history; nothing was delivered twice)")


if __name__ == "__main__":
    trio.run(main)
