"""Hook registration with your own agent loop.

You do not need ``followups.loop.AgentLoop``: any loop delivers background results by calling
the plugin's hook at its boundaries. The loop below has its own message list and a fake model.
After each turn it awaits ``plugin.get_followup_messages()``; a subagent that finished during
the turn comes back as exactly one ``<system-reminder>`` user message, and the loop continues
with it. When a turn ends while a subagent is still running, the loop sleeps in
``store.wait_for_notification()`` instead of polling.

Run it (offline, about a second):

    python examples/own_loop_hooks.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from followups import BackgroundStore, FollowupPlugin, FollowupSettings, SubagentPool

Message = dict[str, str]
MODEL_SECONDS = 0.3  # how long each fake model call takes


async def fake_model(messages: list[Message]) -> str:
    """Stands in for an LLM API call: replies to the newest message."""
    await trio.sleep(MODEL_SECONDS)
    newest = messages[-1]["content"]
    if "[task tests]" in newest:
        return "The tests pass too. All done."
    if "[task lint]" in newest:
        return "Lint is clean. Still waiting for the tests."
    return "Lint and tests are running in the background; I will report when they finish."


async def subagent(name: str, seconds: float) -> str:
    await trio.sleep(seconds)
    return f"{name}: no problems found"


def show(message: Message) -> None:
    print(f"--- {message['role']}\n{message['content']}")


async def run_agent(prompt: str, plugin: FollowupPlugin, store: BackgroundStore) -> list[Message]:
    """A hand-written agent loop that calls the plugin's hook at the end of every turn."""
    messages: list[Message] = [{"role": "user", "content": prompt}]
    show(messages[-1])
    while True:
        messages.append({"role": "assistant", "content": await fake_model(messages)})
        show(messages[-1])
        followups = await plugin.get_followup_messages()
        if not followups and store.live_count():
            print("(turn over, nothing pending, a subagent still running: sleeping until it reports)")
            await store.wait_for_notification()
            followups = await plugin.get_followup_messages()
        if not followups:
            return messages
        for followup in followups:
            messages.append(followup.model_dump())
            show(messages[-1])


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        plugin = FollowupPlugin(store)
        async with SubagentPool(store) as pool:
            pool.spawn(subagent, "lint", 0.1, task_id="lint")  # finishes during the first turn
            pool.spawn(subagent, "tests", 0.8, task_id="tests")  # outlives the second turn
            messages = await run_agent("Lint and test the repository.", plugin, store)
        reminders = [m["content"] for m in messages if m["content"].startswith("<system-reminder>")]
        print(f"\n{len(reminders)} reminders in the conversation")
        for task_id in ("lint", "tests"):
            count = sum(f"[task {task_id}]" in reminder for reminder in reminders)
            print(f"task {task_id} delivered {count} time(s)")
        print(f"one more boundary returns: {await plugin.get_followup_messages()}")


if __name__ == "__main__":
    trio.run(main)
