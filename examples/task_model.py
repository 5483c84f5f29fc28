"""Two conversations on one store: named tasks, a subagent steered by a message, a tree of
subagents cancelled together, progress on the event stream, and a transfer to a successor
conversation. Offline; run it with ``python examples/task_model.py``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
import trio.testing

from followups import (
    BackgroundStore,
    FollowupSettings,
    SubagentPool,
    TaskContext,
    TaskFinished,
    TaskProgress,
    TaskState,
    take_followup,
)


async def researcher(ctx: TaskContext) -> str:
    ctx.report_progress("searching the issue tracker")
    hint = await ctx.inbox.receive()  # steered by the agent while it runs
    return f"found 3 reports about {hint}"


async def crawler(pool: SubagentPool, ctx: TaskContext) -> str:
    pool.spawn(sleepy, name="sitemap")  # a child: its parent is this subagent
    await trio.sleep_forever()
    return "never"


async def sleepy() -> str:
    await trio.sleep_forever()
    return "never"


async def main() -> None:
    relay_dir = Path(tempfile.mkdtemp(prefix="followups-example-"))
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir))
    alice, bob = store.session("alice"), store.session("bob")

    numbers = iter(range(1, 100))
    async with store.subscribe(session="alice") as events, SubagentPool(alice, id_factory=lambda: f"t{next(numbers)}") as pool:
        pool.spawn(researcher, name="research")
        pool.spawn(crawler, pool, name="crawl")
        await trio.testing.wait_all_tasks_blocked()
        print("alice's tasks:", [(t.name, t.kind, t.state.status.value) for t in alice.list()])
        print("bob sees alice's task:", bob.get("research"))

        alice.send("research", "lost notifications")  # by name
        print("cancelled with its tree:", sorted(alice.cancel_tree("crawl")))
        with trio.fail_after(5):
            while alice.live_count():
                await alice.wait_for_change()

        delivery = take_followup(alice)
        assert delivery is not None
        print(delivery.text)
        delivery.confirm()
        for event in iter(events.receive_nowait, None):
            if isinstance(event, TaskProgress):
                print(f"progress of {event.id}: {event.message}")
            elif isinstance(event, TaskFinished):
                print(f"finished: {event.id} ({event.notification.state.status.value})")

    # A conversation resumed under a new id takes its pending results along.
    old = store.session("alice-before-compaction")
    old.insert("summary", name="summary")
    old.notify("summary", TaskState.completed("the summary of the old part"))
    store.transfer("alice-before-compaction", "alice")
    print("after the transfer, alice receives:", [n.id for n in alice.drain_notifications()])


if __name__ == "__main__":
    trio.run(main)
