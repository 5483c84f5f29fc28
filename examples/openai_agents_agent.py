"""followups with the OpenAI Agents SDK, offline.

A scripted model (the SDK's own ``agents.testing.ScriptedModel``) starts a review subagent
through the ``task`` tool and ends its turn. When the subagent has finished, the next run's
model call carries the ``<system-reminder>`` as a user message at the end of its input, and the
history kept for the run after that (``FollowupRunResult.to_input_list()``) still holds it, once.

Run it (offline, under a second; needs ``pip install 'followups[openai-agents]'``):

    python examples/openai_agents_agent.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agents import Agent, RunConfig
from agents.testing import ScriptedModel, assistant_message, function_call
from followups import BackgroundStore, FollowupSettings, SubagentPool
from followups.adapters.openai_agents import FollowupRunner, followup_function_tools
from followups.tools import TaskRequest


def reviewer(may_finish: asyncio.Event) -> Callable[[TaskRequest], Awaitable[str]]:
    """A stand-in subagent that finishes once ``may_finish`` is set: after the first run here."""

    async def review(request: TaskRequest) -> str:
        await may_finish.wait()
        return f"Reviewed ({request.prompt}): one unused import in cli.py."

    return review


def describe(item: Any) -> str:
    """One model input item, as a short line (the user messages in full)."""
    kind = item.get("type", "message")
    if kind == "message" and item.get("role") == "user":
        return f"[user]\n{item['content']}"
    if kind == "message":
        return f"[{item['role']}] " + "".join(part.get("text", "") for part in item["content"])
    if kind == "function_call":
        return f"[tool call] {item['name']}({item['arguments']})"
    if kind == "function_call_output":
        return f"[tool result] {item['output'].splitlines()[0]}"
    return f"[{kind}]"


def show(title: str, items: list[Any]) -> None:
    print(f"=== {title} ===")
    for item in items:
        print(describe(item))
    print()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        model = ScriptedModel(
            [
                [function_call("task", {"description": "review", "prompt": "review the diff"}, call_id="call-1")],
                [assistant_message("The review is running; I will report when it is done.", item_id="msg-1")],
                [assistant_message("The review found one unused import in cli.py.", item_id="msg-2")],
                [assistant_message("You're welcome.", item_id="msg-3")],
            ]
        )
        # By default the first run would wait for the review and run again by itself; this example
        # ends it, to show the result reaching the next user turn and staying in the kept history.
        runner = FollowupRunner(store, resume_when_idle=False)
        config = RunConfig(tracing_disabled=True)
        review_may_finish = asyncio.Event()
        async with SubagentPool(store, id_factory=iter(["review-1"]).__next__) as pool:
            tools = followup_function_tools(pool, reviewer(review_may_finish))
            agent = Agent(name="assistant", model=model, tools=tools)
            first = await runner.run(agent, "Review my diff.", run_config=config)
            review_may_finish.set()
            await store.wait_for_notification()
            history = [*first.to_input_list(), {"role": "user", "content": "Is the review done?"}]
            second = await runner.run(agent, history, run_config=config)
            history = [*second.to_input_list(), {"role": "user", "content": "Thanks."}]
            await runner.run(agent, history, run_config=config)
        show("the model receives (second run)", model.calls[2].input)
        print(f"final output: {second.final_output}\n")
        show("the model receives (third run, from the kept history)", model.calls[3].input)
        print(f"model calls: {len(model.calls)}, notifications pending: {store.pending_count()}")


if __name__ == "__main__":
    asyncio.run(main())
