"""A worker process for the Redis backend's multi-process tests: ``python redis_worker.py ROLE
URL [ARGS…]``. Each role opens its own store on the Redis URL, as a separate worker of a
deployment would, prints ``ready`` (and what the test needs) on stdout, and does its part."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import redis
import trio

from followups import BackgroundStore, FollowupSettings, SubagentPool, TaskState


def settings(relay: str, **overrides: object) -> FollowupSettings:
    return FollowupSettings(relay_dir=Path(relay), worker_ttl_seconds=1.0, **overrides)  # type: ignore[arg-type]


def say(*parts: object) -> None:
    print(*parts, flush=True)


def hold_a_task(url: str, relay: str, session: str) -> None:
    """Start a task and keep running it until killed."""
    store = BackgroundStore.open(url, settings(relay))
    store.session(session).insert("job", description="a long job")
    store.session(session).notify_started("job")
    say("ready", store.epoch)
    time.sleep(3600)


def hold_a_lease(url: str, relay: str, session: str) -> None:
    """Take a delivery of the session's pending results and die before confirming it."""
    store = BackgroundStore.open(url, settings(relay, delivery_lease_seconds=1.0))
    from followups.ledger import LeaseRequest

    lease = store.backend.lease(session, LeaseRequest(store.epoch, time.time(), 1.0))
    say("ready", 0 if lease is None else len(lease.notifications))
    time.sleep(3600)


def hold_a_long_lease(url: str, relay: str, session: str) -> None:
    """Take a delivery leased for an hour and die before confirming it."""
    store = BackgroundStore.open(url, settings(relay))
    from followups.ledger import LeaseRequest

    lease = store.backend.lease(session, LeaseRequest(store.epoch, time.time(), 3600.0))
    say("ready", 0 if lease is None else len(lease.notifications))
    time.sleep(3600)


def run_forever_subagent(url: str, relay: str, session: str) -> None:
    """Run one subagent that waits forever, until it is cancelled; report how it ended."""

    async def main() -> None:
        store = BackgroundStore.open(url, settings(relay))
        ended = trio.Event()

        async def forever() -> str:
            try:
                await anyio.sleep(3600)
            finally:
                ended.set()
            return "never"

        async with SubagentPool(store.session(session), close="wait") as pool:
            task_id = pool.spawn(forever)
            say("ready", task_id)
            with trio.fail_after(30):
                await ended.wait()
        say("cancelled", store.session(session).get(task_id).state.status.value)  # type: ignore[union-attr]
        store.close()

    trio.run(main)


def finish_one(url: str, relay: str, session: str, task_id: str) -> None:
    store = BackgroundStore.open(url, settings(relay))
    store.session(session).insert(task_id)
    store.session(session).notify(task_id, TaskState.completed(f"result of {task_id}"))
    say("done")
    store.close()


def capped_worker(url: str, relay: str, session: str, count: str, cap: str, counter_url: str) -> None:
    """Run ``count`` subagents in ``session`` under ``max_concurrent=cap``; each counts itself
    running in a Redis counter and records the highest count it saw."""
    observer = redis.Redis.from_url(counter_url)

    async def main() -> None:
        store = BackgroundStore.open(url, settings(relay, capacity=64, max_concurrent=int(cap)))

        async def subagent(i: int) -> str:
            now = observer.incr("observe:running")
            observer.eval(
                "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end",
                1,
                "observe:max",
                now,
            )
            await trio.sleep(0.02)
            observer.decr("observe:running")
            return f"r{i}"

        say("ready")
        async with SubagentPool(store.session(session), when_full="queue", max_queued=30, close="wait") as pool:
            for i in range(int(count)):
                pool.spawn(subagent, i)
        say("finished")
        store.close()

    trio.run(main)


def producer(url: str, relay: str, index: str, tasks: str, sessions: str) -> None:
    """Finish ``tasks`` tasks spread over ``sessions`` sessions, in order."""
    store = BackgroundStore.open(url, settings(relay, capacity=64))
    views = [store.session(f"s{k}") for k in range(int(sessions))]
    say("ready")
    for i in range(int(tasks)):
        view = views[i % len(views)]
        task_id = f"p{index}-{i}"
        view.insert(task_id)
        view.notify(task_id, TaskState.completed(task_id))
    say("done")
    store.close()


def consumer(url: str, relay: str, sessions: str, expected: str, out: str) -> None:
    """Drain random sessions until ``expected`` results are delivered store-wide (counted in
    Redis); write what this consumer got as JSON lines (session, id, sequence)."""
    store = BackgroundStore.open(url, settings(relay))
    counter = redis.Redis.from_url(url.partition("?")[0])
    names = [f"s{k}" for k in range(int(sessions))]
    rng = random.Random()
    say("ready")
    with open(out, "w") as file:
        while int(counter.get("observe:delivered") or 0) < int(expected):
            batch = store.session(rng.choice(names)).drain_notifications()
            if not batch:
                time.sleep(0.01)
                continue
            for n in batch:
                file.write(json.dumps([n.session, n.id, n.sequence]) + "\n")
            counter.incrby("observe:delivered", len(batch))
    say("done")
    store.close()


def reserve_and_die(url: str, relay: str, session: str, when: str) -> None:
    """Spawn one subagent under the store-wide cap and stop dead at ``when``: ``before_create``
    (a store-wide slot reserved, its session's create script not run) or ``before_settle`` (the
    run created with the slot, the reservation not yet settled). The test kills it there."""

    async def main() -> None:
        store = BackgroundStore.open(url, settings(relay, max_concurrent=4, max_concurrent_total=3))
        backend: Any = store.backend

        def stop_here(*_: object, **__: object) -> None:
            say("stopped", store.epoch)
            time.sleep(3600)

        if when == "before_create":
            backend._call_hook = lambda operation, keys: stop_here() if operation == "create" else None
        else:
            backend._settle_total = stop_here

        async def subagent() -> str:
            await trio.sleep(3600)
            return "never"

        async with SubagentPool(store.session(session)) as pool:
            pool.spawn(subagent)

    trio.run(main)


def finish_many(url: str, relay: str, session: str, first: str, count: str, log_length: str = "1000") -> None:
    """Insert and finish tasks ``r{first}`` … of ``session``, in order (keeping about
    ``log_length`` entries of the session's event log)."""
    store = BackgroundStore.open(url, settings(relay, capacity=1024, redis_event_stream_length=int(log_length)))
    view = store.session(session)
    for i in range(int(first), int(first) + int(count)):
        view.insert(f"r{i}")
        view.notify(f"r{i}", TaskState.completed(f"result {i}"))
    say("done")
    store.close()


ROLES = {
    "hold_a_task": hold_a_task,
    "hold_a_lease": hold_a_lease,
    "hold_a_long_lease": hold_a_long_lease,
    "run_forever_subagent": run_forever_subagent,
    "finish_one": finish_one,
    "capped_worker": capped_worker,
    "producer": producer,
    "consumer": consumer,
    "reserve_and_die": reserve_and_die,
    "finish_many": finish_many,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
