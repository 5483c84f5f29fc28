"""Using followups under asyncio.

Everything in followups runs on asyncio as well as trio. A scripted model starts a subagent
through the ``task`` tool and ends its turn; with ``idle_resume=pool`` the ``AgentLoop`` waits
for the subagent instead of ending the run, and continues with the follow-up reminder that
``FollowupPlugin`` produces. Then a result arrives from a worker thread
(``asyncio.to_thread(store.notify, ...)``) and wakes a task parked in
``store.wait_for_notification()``.

Run it (offline, under a second):

    python examples/asyncio_usage.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from followups import BackgroundStore, FollowupPlugin, FollowupSettings, SubagentPool, TaskState
from followups.loop import AgentLoop, AssistantMessage, ScriptedModel, tool_call
from followups.tools import TaskRequest, task_tools


async def review(request: TaskRequest) -> str:
    await asyncio.sleep(0.2)
    return f"Reviewed ({request.prompt}): one unused import in cli.py."


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        plugin = FollowupPlugin(store)
        model = ScriptedModel(
            [
                AssistantMessage(
                    content="Starting a review in the background.",
                    tool_calls=[tool_call("task", description="review", prompt="review the diff")],
                ),
                "The review is running; I will report when it is done.",
                "The review found one unused import in cli.py.",
            ]
        )
        async with SubagentPool(store) as pool:
            loop = AgentLoop(model, task_tools(pool, review), idle_resume=pool)
            plugin.register(loop)
            await loop.run("Review my diff.")
        for message in loop.messages:
            print(f"--- {message.role}\n{message.content}")
        print(f"\nmodel calls: {len(model.inputs)}\n")

        store.insert("export", description="export the report")
        waiter = asyncio.create_task(store.wait_for_notification(timeout=5))
        await asyncio.sleep(0.1)  # let the waiter start waiting before the result exists
        print(f"waiter parked (done={waiter.done()}); notifying from a worker thread")
        await asyncio.to_thread(store.notify, "export", TaskState.completed("report.csv: 12 rows"))
        print(f"wait_for_notification() returned {await waiter}")
        [message] = await plugin.get_followup_messages()
        print(f"--- {message.role} (follow-up for the thread's result)\n{message.content}")


if __name__ == "__main__":
    asyncio.run(main())
