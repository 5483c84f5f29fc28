"""A durable session survives a crash: a first process runs two subagents on a SQLite store,
one finishes, and the process is killed (SIGKILL) while the other still runs. After the
restart, ``store.session("conv-42")`` delivers the finished result and the orphaned task, in
order, exactly once. Offline; run it with ``python examples/durable_session.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from followups import BackgroundStore, FollowupSettings, SubagentPool, take_followup


async def lint() -> str:
    return "lint: no problems found"


async def tests() -> str:
    await trio.sleep_forever()  # still running when the process dies
    return "never"


async def first_run(url: str, settings: FollowupSettings) -> None:
    store = BackgroundStore.open(url, settings)
    async with SubagentPool(store.session("conv-42")) as pool:
        pool.spawn(lint, task_id="lint")
        pool.spawn(tests, task_id="tests")
        await store.session("conv-42").wait_for_notification()  # lint's result is committed
        print(f"first process (pid {os.getpid()}): lint finished, tests running; killed now", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def after_restart(url: str, settings: FollowupSettings) -> None:
    with BackgroundStore.open(url, settings) as store:  # recovery runs on open
        conv = store.session("conv-42")
        for task in conv.list():
            print(f"record {task.id}: {task.state.status.value}")
        delivery = take_followup(conv)
        assert delivery is not None
        print(delivery.text)
        delivery.confirm()
        print(f"pending after the delivery: {conv.pending_count()}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--first-run":
        trio.run(first_run, sys.argv[2], FollowupSettings(relay_dir=sys.argv[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'state' / 'followups.db'}"
        relay_dir = str(Path(tmp) / "relay")
        child = subprocess.run([sys.executable, __file__, "--first-run", url, relay_dir], timeout=60)
        print(f"first process ended by signal {-child.returncode}")
        after_restart(url, FollowupSettings(relay_dir=relay_dir))


if __name__ == "__main__":
    main()
