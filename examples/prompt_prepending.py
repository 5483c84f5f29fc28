"""Prompt prepending: results that arrive while the user is idle ride on the next prompt.

Two subagents finish between turns, while nobody is talking to the model. Instead of a
follow-up message, the next user prompt goes through ``prepend_pending_notifications``, so
the model receives one ``<system-reminder>`` followed by the prompt, verbatim. The results
are delivered exactly once: the prompt after that reaches the model unchanged.

Run it (offline, under a second):

    python examples/prompt_prepending.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from followups import BackgroundStore, FollowupSettings, SubagentPool, prepend_pending_notifications


async def summarise(path: str) -> str:
    await trio.sleep(0.05)
    return f"{path}: a plugin that delivers background results as reminders."


async def migrate() -> str:
    await trio.sleep(0.1)
    raise RuntimeError("table 'users' is locked")


def show(label: str, text: str) -> None:
    print(f"=== {label} ===\n{text}\n")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        async with SubagentPool(store) as pool:
            pool.spawn(summarise, "README.md", task_id="readme")
            pool.spawn(migrate, task_id="migration")
            await trio.sleep(0.5)  # the user is idle; both subagents finish meanwhile
            print(f"pending before the next prompt: {store.pending_count()}\n")

            prompt = "What did the background tasks find?"
            show("the model receives", prepend_pending_notifications(prompt, store))

            second = "Thanks. Now fix the migration."
            received = prepend_pending_notifications(second, store)
            show("the model receives next", received)
            print(f"second prompt unchanged: {received == second}")


if __name__ == "__main__":
    trio.run(main)
