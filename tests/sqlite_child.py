"""A process that uses a SQLite store and is killed by the durability tests.

``python sqlite_child.py SCENARIO URL RELAY_DIR [ARGS...]``. It prints one line per committed
step (flushed), so the parent knows what was committed before it sent SIGKILL:
``ready``, ``finished ID``, ``leased ID,ID``, ``confirmed ID,ID``, ``drained ID``, ``done``.
"""

from __future__ import annotations

import sys
import time

from followups import BackgroundStore, FollowupSettings, TaskState


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def big_text(lines: int) -> str:
    return "\n".join(f"output line {n}" for n in range(lines))


def main(argv: list[str]) -> int:
    scenario, url, relay_dir, *rest = argv
    settings = FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=600)
    store = BackgroundStore.open(url, settings)
    session = store.session("conv-42")
    if scenario == "finish-then-wait":
        for task_id in ("t1", "t2", "t3", "t4"):
            session.insert(task_id, description=f"task {task_id}")
        session.notify("t1", TaskState.completed("result one"))
        session.notify("t2", TaskState.failed("boom"))
        session.notify("t4", TaskState.completed(big_text(2000)))
        out("ready")
    elif scenario == "lease-then-wait":
        for task_id in ("t1", "t2"):
            session.insert(task_id)
            session.notify(task_id, TaskState.completed(f"result of {task_id}"))
        session.insert("t3")
        lease = session.lease()
        assert lease is not None
        out("leased " + ",".join(n.id for n in lease.notifications))
    elif scenario == "churn":
        index = 0
        while True:
            task_id = f"t{index}"
            session.insert(task_id)
            session.notify(task_id, TaskState.completed(f"result {index} " + "x" * (index % 7) * 40))
            out(f"finished {task_id}")
            if index % 3 == 2:
                lease = session.lease()
                if lease is not None:
                    ids = ",".join(n.id for n in lease.notifications)
                    out(f"leased {ids}")
                    session.settle(lease.id, delivered=True)
                    out(f"confirmed {ids}")
            index += 1
            if index % 50 == 0:
                session.gc_finished()
    elif scenario == "drain":
        # drain the session until nothing is live or pending, printing each id taken
        while True:
            lease = session.lease(max_entries=int(rest[0]) if rest else None)
            if lease is None:
                if not session.has_live():
                    break
                time.sleep(0.002)
                continue
            for notification in lease.notifications:
                out(f"drained {notification.id}")
            session.settle(lease.id, delivered=True)
        out("done")
        store.close()
        return 0
    elif scenario == "send":
        # a message into a task another process runs, then its cancel
        target, message = rest
        session.send(target, message)
        out("done")
        store.close()
        return 0
    elif scenario == "cancel":
        for task_id in rest:
            session.cancel(task_id)
        out("done")
        store.close()
        return 0
    elif scenario == "notify":
        # report results for tasks another process registered
        for task_id in rest:
            session.notify(task_id, TaskState.completed(f"finished elsewhere: {task_id}"))
        out("done")
        store.close()
        return 0
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    while True:
        time.sleep(60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
