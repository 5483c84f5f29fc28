"""Figures of the Redis backend against raw redis-py floors on the same server.

Starts its own ``redis-server`` (appendfsync everysec) on a free loopback port. Each figure is
the median of rounds, with the rounds' min-max, as a ratio to a floor that makes the same
number of round trips with plain commands:

* **per task** — finish + lease + confirm of one task (3 scripts) against SET + GET + DEL;
* **throughput** — 8 producer processes each inserting and finishing tasks (2 scripts each)
  against 8 processes doing 2 plain commands per item;
* **wake-up** — a finish on one connection until the other connection's listener thread hands
  the change to its store (what wakes its waiters), against a bare PUBLISH seen by a
  subscriber thread.

``python -m benchmarks.redis_figures [--rounds N] [--tasks N] [--check]``; ``--check`` exits
non-zero when a target is missed (per task <= 1.5x).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_server import RedisServer  # noqa: E402

import redis  # noqa: E402

from followups import BackgroundStore, FollowupSettings, TaskState  # noqa: E402
from followups.bounding import report_digest  # noqa: E402
from followups.ledger import CreateRequest, FinishReport, LeaseRequest, SessionChanged  # noqa: E402
from followups.ledger.redis import RedisBackend  # noqa: E402

TARGET_PER_TASK = 1.5


class _Listener:
    wants_events = False

    def apply(self, effects: object) -> None:
        return None


def per_task_round(url: str, tasks: int) -> tuple[float, float]:
    backend = RedisBackend(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    epoch = backend.connect(_Listener(), now=time.time())
    state = TaskState.completed("a result")
    digest = report_digest(state)
    ours = 0.0
    for i in range(tasks):  # the default capacity (32 records) keeps the session's document small
        ref = backend.create(CreateRequest("s", f"t{i}", epoch, time.time(), capacity=32, max_pending=10_000)).ref
        start = time.perf_counter()
        now = time.time()
        backend.finish(ref, FinishReport(state, digest, now))
        lease = backend.lease("s", LeaseRequest(epoch, now, 60.0))
        assert lease is not None
        backend.confirm(lease.id, now=now)
        ours += time.perf_counter() - start
    backend.close()
    client = redis.Redis.from_url(url)
    start = time.perf_counter()
    for i in range(tasks):
        client.set(f"floor:{i}", "a result")
        client.get(f"floor:{i}")
        client.delete(f"floor:{i}")
    floor = time.perf_counter() - start
    client.close()
    return ours, floor


def _producer(url: str, prefix: str, items: int, raw: bool, ready: object, go: object) -> None:
    if raw:
        client = redis.Redis.from_url(url)
        ready.wait()  # type: ignore[attr-defined]
        go.wait()  # type: ignore[attr-defined]
        name = uuid.uuid4().hex
        for i in range(items):
            client.set(f"{name}:{i}", "x")
            client.rpush(f"{name}:q", i)
        client.close()
        return
    settings = FollowupSettings(relay_dir=Path(tempfile.gettempdir()) / "followups-bench-relay")
    store = BackgroundStore.open(f"{url}?prefix={prefix}", settings)
    session = store.session(f"s-{uuid.uuid4().hex[:6]}")
    ready.wait()  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    for i in range(items):
        ref = session.insert(f"t{i}")
        session.notify(ref, TaskState.completed("x"))
    store.close()


def throughput_round(url: str, items: int, producers: int = 8) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    results = []
    for raw in (False, True):
        ready = context.Barrier(producers + 1)
        go = context.Event()
        procs = [
            context.Process(target=_producer, args=(url, f"bench-{uuid.uuid4().hex[:8]}", items, raw, ready, go))
            for _ in range(producers)
        ]
        for proc in procs:
            proc.start()
        ready.wait()
        start = time.perf_counter()
        go.set()
        for proc in procs:
            proc.join(timeout=300)
        results.append(time.perf_counter() - start)
    return results[0], results[1]


def wakeup_round(url: str, samples: int) -> tuple[float, float]:
    """Time from a finish on one connection to the other connection's listener thread handing
    the session's change to its store (what wakes that store's waiters)."""
    settings = FollowupSettings(relay_dir=Path(tempfile.gettempdir()) / "followups-bench-relay")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    waiter_store = BackgroundStore.open(f"{url}?prefix={prefix}", settings)
    maker_store = BackgroundStore.open(f"{url}?prefix={prefix}", settings)
    backend = waiter_store.backend
    assert isinstance(backend, RedisBackend)
    woke = threading.Event()
    dispatch = backend._dispatch

    def watching(effects: list[object]) -> None:
        dispatch(effects)  # type: ignore[arg-type]
        if any(isinstance(effect, SessionChanged) for effect in effects):
            woke.set()

    backend._dispatch = watching  # type: ignore[method-assign]
    ours = []
    for i in range(samples):
        ref = maker_store.session("s").insert(f"t{i}")
        time.sleep(0.002)
        woke.clear()
        start = time.perf_counter()
        maker_store.session("s").notify(ref, TaskState.completed("x"))
        woke.wait(5)
        ours.append(time.perf_counter() - start)
    waiter_store.close()
    maker_store.close()
    client = redis.Redis.from_url(url)
    subscriber = redis.Redis.from_url(url).pubsub()
    subscriber.subscribe("bench:floor")
    subscriber.get_message(timeout=1)
    got = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if subscriber.get_message(timeout=0.2) is not None:
                got.set()

    listener = threading.Thread(target=listen)
    listener.start()
    floors = []
    for _ in range(samples):
        time.sleep(0.002)
        got.clear()
        start = time.perf_counter()
        client.publish("bench:floor", "x")
        got.wait(5)
        floors.append(time.perf_counter() - start)
    stop.set()
    listener.join()
    subscriber.close()
    client.close()
    return statistics.median(ours), statistics.median(floors)


def _summary(name: str, pairs: list[tuple[float, float]], unit: str, scale: float) -> float:
    ratios = [ours / floor for ours, floor in pairs]
    median = statistics.median(ratios)
    ours = statistics.median(p[0] for p in pairs) * scale
    floor = statistics.median(p[1] for p in pairs) * scale
    print(
        f"{name:<28} {median:5.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x)   "
        f"ours {ours:9.1f} {unit}   floor {floor:9.1f} {unit}"
    )
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=500, help="tasks per round of the per-task figure")
    parser.add_argument("--items", type=int, default=250, help="tasks per producer per throughput round")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis", appendfsync="everysec")
        server.start()
        try:
            url = server.url
            print(f"redis-server on 127.0.0.1:{server.port}, appendfsync everysec; {args.rounds} rounds")
            per_task = [per_task_round(url, args.tasks) for _ in range(args.rounds)]
            per_task_ratio = _summary(
                "per task (finish+lease+confirm)", per_task, "us/task", 1e6 / args.tasks
            )
            throughput = [throughput_round(url, args.items) for _ in range(max(1, args.rounds // 2))]
            _summary("throughput, 8 producers", throughput, "s", 1.0)
            total = 8 * args.items
            ours_rate = total / statistics.median(p[0] for p in throughput)
            print(f"{'':<28} {ours_rate:8.0f} notifications/s with 8 producer processes")
            wakeups = [wakeup_round(url, 50) for _ in range(args.rounds)]
            _summary("wake-up (other connection)", wakeups, "us", 1e6)
        finally:
            server.stop()
    missed = per_task_ratio > TARGET_PER_TASK
    if missed:
        print(f"MISS: per task {per_task_ratio:.2f}x > {TARGET_PER_TASK}x")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
