"""The Redis backend across real processes: orphaned workers, expired leases, routed cancels,
wake-ups, a cap across workers, many producers and consumers, a paused and a restarted
server, and the cluster-slot rule of its scripts. Every subprocess has a hard timeout."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import redis
import trio
import trio.testing
from redis_server import RedisServer

from followups import BackgroundStore, FollowupSettings, StoreUnavailable, TaskState, TaskStatus


WORKER = str(Path(__file__).resolve().parent / "redis_worker.py")


class Worker:
    """A ``redis_worker.py`` subprocess; killed at the end of the test whatever happens."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    def line(self, timeout: float = 20.0) -> str:
        """The next line the worker prints, or a failure with its stderr."""
        assert self.process.stdout is not None
        if not self._selector.select(timeout):
            self.kill()
            pytest.fail(f"worker printed nothing in {timeout} s; stderr: {self.stderr()}")
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"worker exited ({self.process.wait()}); stderr: {self.stderr()}")
        return line.strip()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self._selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return f"{redis_server.url}?prefix=w-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test server, for what the tests observe from outside."""
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def spawn(workers: list[Worker], *args: str) -> Worker:
    worker = Worker(*args)
    workers.append(worker)
    return worker


def open_store(url: str, tmp_path: Path, **overrides: object) -> BackgroundStore:
    settings = FollowupSettings(relay_dir=tmp_path / "relay", **overrides)  # type: ignore[arg-type]
    return BackgroundStore.open(url, settings)


def wait_until(condition: object, timeout: float = 20.0) -> None:
    """Poll a condition in another process's hands (a key expiring) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


# -- workers that die -------------------------------------------------------------------------------


async def test_a_killed_worker_is_orphaned_by_another_within_its_ttl(url: str, tmp_path: Path, workers: list[Worker]) -> None:
    held = spawn(workers, "hold_a_task", url, str(tmp_path / "relay"), "s1")
    assert held.line().startswith("ready")
    with open_store(url, tmp_path, worker_ttl_seconds=1.0) as store:
        session = store.session("s1")
        assert session.get("job").state.status is TaskStatus.RUNNING  # type: ignore[union-attr]
        held.kill()
        with trio.fail_after(15):
            assert await session.wait_for_notification()
        [notification] = session.drain_notifications()
        assert notification.state.status is TaskStatus.FAILED
        assert notification.state.text.startswith("orphaned: worker redis-")
        assert "stopped (last heartbeat " in notification.state.text
        assert session.live_count() == 0


def test_concurrent_recovery_orphans_a_dead_workers_task_exactly_once(
    url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    held = spawn(workers, "hold_a_task", url, str(tmp_path / "relay"), "s1")
    _, epoch = held.line().split()
    stores = [open_store(url, tmp_path, worker_ttl_seconds=60.0) for _ in range(4)]
    try:
        held.kill()
        client = redis.Redis.from_url(url.partition("?")[0])
        prefix = url.partition("prefix=")[2]
        wait_until(lambda: not client.exists(f"{{{prefix}}}:epoch:{epoch}"))
        barrier = threading.Barrier(len(stores))
        orphaned: list[int] = []

        def recover(store: BackgroundStore) -> None:
            barrier.wait()
            orphaned.append(store.recover())

        threads = [threading.Thread(target=recover, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(orphaned) == [0, 0, 0, 1]
        notifications = stores[0].session("s1").drain_notifications()
        assert [n.id for n in notifications] == ["job"]
        assert stores[1].session("s1").drain_notifications() == []
    finally:
        for store in stores:
            store.close()


async def test_a_cancel_for_a_dead_workers_task_is_finished_by_recovery(
    url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    held = spawn(workers, "hold_a_task", url, str(tmp_path / "relay"), "s1")
    assert held.line().startswith("ready")
    held.kill()  # the owner is gone before it could carry out the cancel
    with open_store(url, tmp_path, worker_ttl_seconds=1.0) as store:
        session = store.session("s1")
        assert session.cancel("job", "no longer needed")
        assert session.get("job").state.status is TaskStatus.RUNNING, "a running task waits for its owner"  # type: ignore[union-attr]
        with trio.fail_after(15):
            assert await session.wait_for_notification()
        [notification] = session.drain_notifications()
        assert notification.state.status is TaskStatus.CANCELLED
        assert notification.state.text == "no longer needed"


async def test_a_lease_held_by_a_killed_consumer_reopens_and_is_delivered_once(
    url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    with open_store(url, tmp_path) as store:
        session = store.session("s1")
        session.insert("t1")
        session.notify("t1", TaskState.completed("the result"))
        holder = spawn(workers, "hold_a_lease", url, str(tmp_path / "relay"), "s1")
        assert holder.line() == "ready 1"
        holder.kill()
        assert session.drain_notifications() == [], "the dead consumer's lease still holds it"
        session.insert("keeps-the-session-live")
        with trio.fail_after(15):
            assert await session.wait_for_notification()  # wakes when the lease expires
        delivered = session.drain_notifications()
        assert [(n.id, n.state.text) for n in delivered] == [("t1", "the result")]
        assert session.drain_notifications() == []


async def test_a_lease_held_by_a_dead_worker_reopens_with_its_runs_not_at_its_expiry(
    url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    with open_store(url, tmp_path, worker_ttl_seconds=1.0) as store:
        session = store.session("s1")
        session.insert("t1")
        session.notify("t1", TaskState.completed("the result"))
        holder = spawn(workers, "hold_a_long_lease", url, str(tmp_path / "relay"), "s1")
        assert holder.line() == "ready 1"
        holder.kill()
        assert session.drain_notifications() == [], "the dead consumer's lease still holds it"
        session.insert("keeps-the-session-live")
        with trio.fail_after(15):  # its heartbeat expires after 1 s; the lease had an hour left
            assert await session.wait_for_notification()
        assert [(n.id, n.state.text) for n in session.drain_notifications()] == [("t1", "the result")]
        assert session.drain_notifications() == []


# -- across processes ----------------------------------------------------------------------------------


async def test_a_cancel_from_one_process_stops_the_subagent_running_in_another(
    url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    runner = spawn(workers, "run_forever_subagent", url, str(tmp_path / "relay"), "s1")
    ready, task_id = runner.line().split()
    with open_store(url, tmp_path) as store:
        session = store.session("s1")
        outcome = session.cancel(task_id)
        assert outcome
        with trio.fail_after(15):
            assert await session.wait_for_notification()
        [notification] = session.drain_notifications()
        assert notification.id == task_id and notification.state.status is TaskStatus.CANCELLED
    assert runner.line() == "cancelled cancelled"
    assert runner.wait() == 0


async def test_a_waiter_wakes_when_another_process_finishes_a_task(url: str, tmp_path: Path, workers: list[Worker]) -> None:
    with open_store(url, tmp_path) as store:
        session = store.session("s1")
        session.insert("placeholder")  # keeps the session live while the waiter waits
        changed = trio.Event()

        async def waiter() -> None:
            assert await session.wait_for_notification()
            changed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            finisher = spawn(workers, "finish_one", url, str(tmp_path / "relay"), "s1", "remote")
            with trio.fail_after(20):
                await changed.wait()
        assert [n.id for n in session.drain_notifications()] == ["remote"]
        assert finisher.line() == "done"


def test_the_cap_holds_across_four_worker_processes(
    redis_server: RedisServer, url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    counter_url = redis_server.url
    client.delete("observe:running", "observe:max")
    cap, per_worker = 2, 6
    procs = [
        spawn(workers, "capped_worker", url, str(tmp_path / "relay"), "capped", str(per_worker), str(cap), counter_url)
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.line() == "ready"
    for proc in procs:
        assert proc.line(60) == "finished"
        assert proc.wait() == 0
    assert 1 <= int(client.get("observe:max") or 0) <= cap
    with open_store(url, tmp_path, capacity=64) as store:
        delivered = store.session("capped").drain_notifications()
    assert len(delivered) == 4 * per_worker
    assert {n.state.status for n in delivered} == {TaskStatus.COMPLETED}


def test_many_producers_and_consumers_deliver_each_result_once_in_finish_order(
    redis_server: RedisServer, url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    producers, consumers, sessions = 8, 4, 16
    per_producer = 10_000 // producers
    client.delete("observe:delivered")
    relay = str(tmp_path / "relay")
    outs = [tmp_path / f"consumer-{k}.jsonl" for k in range(consumers)]
    drainers = [spawn(workers, "consumer", url, relay, str(sessions), str(producers * per_producer), str(out)) for out in outs]
    makers = [spawn(workers, "producer", url, relay, str(k), str(per_producer), str(sessions)) for k in range(producers)]
    for proc in drainers + makers:
        assert proc.line() == "ready"
    for proc in makers + drainers:
        assert proc.line(120) == "done"
        assert proc.wait() == 0
    seen: dict[str, tuple[str, int]] = {}
    for out in outs:
        for line in out.read_text().splitlines():
            session, task_id, sequence = json.loads(line)
            assert task_id not in seen, f"{task_id} delivered twice"
            seen[task_id] = (session, sequence)
    assert len(seen) == producers * per_producer
    by_producer: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for task_id, (session, sequence) in seen.items():
        name, _, index = task_id.partition("-")
        by_producer[(session, name)].append((int(index), sequence))
    for pairs in by_producer.values():
        pairs.sort()
        sequences = [sequence for _, sequence in pairs]
        assert sequences == sorted(sequences), "a producer's results arrived out of finish order"


# -- a server that stops answering or restarts ------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    from redis_server import redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    server = RedisServer(tmp_path / "own-redis", appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_paused_server_keeps_reports_visible_and_delivers_them_after(own_server: RedisServer, tmp_path: Path) -> None:
    with open_store(own_server.url, tmp_path, redis_timeout_seconds=0.3) as store:
        refs = [store.insert("t1"), store.insert("t2")]
        own_server.pause()
        try:
            assert store.notify(refs[0], TaskState.completed("one")), "a report is never refused for a paused store"
            assert store.notify(refs[1], TaskState.completed("two"))
            for ref in refs:
                kept = store._core.kept.lookup(ref)
                assert kept is not None, "the report is kept in memory"
                assert f"127.0.0.1:{own_server.port}" in kept[1], "its persistence error names the server"
            with pytest.raises(StoreUnavailable, match=rf"127\.0\.0\.1:{own_server.port}"):
                store.drain_notifications()
        finally:
            own_server.resume()
        deadline = time.monotonic() + 20
        while store._core.kept and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not store._core.kept, "kept reports were not retried after the server came back"
        assert sorted(n.id for n in store.drain_notifications()) == ["t1", "t2"]


def test_a_restarted_server_keeps_every_committed_result(own_server: RedisServer, tmp_path: Path) -> None:
    with open_store(own_server.url, tmp_path) as store:
        for i in range(20):
            store.insert(f"t{i}")
            store.notify(f"t{i}", TaskState.completed(f"r{i}"))
        own_server.restart()
        drained = store.drain_notifications()  # the client reconnects by itself
        assert [n.id for n in drained] == [f"t{i}" for i in range(20)]
        assert [n.state.text for n in drained] == [f"r{i}" for i in range(20)]


# -- one cluster slot per operation ------------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_slot(key: str) -> int:
    """Redis Cluster's slot of ``key``: CRC16 of its hash tag (the first non-empty ``{…}``)."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16_xmodem(raw) % 16384


def test_the_slot_function_matches_redis_cluster() -> None:
    assert cluster_slot("123456789") == 0x31C3 % 16384  # the CRC16/XMODEM check value
    assert cluster_slot("{user1000}.following") == cluster_slot("{user1000}.followers")
    assert cluster_slot("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % 16384  # an empty tag hashes the whole key


async def test_every_operation_names_keys_of_one_cluster_slot(url: str, tmp_path: Path) -> None:
    from followups import SubagentPool

    calls: list[tuple[str, list[str]]] = []
    with open_store(url, tmp_path, max_concurrent=1) as store:
        store.backend._call_hook = lambda operation, keys: calls.append((operation, keys))  # type: ignore[attr-defined]
        for name in ("s1", "{conv}a", "{conv}b"):
            session = store.session(name)
            ref = session.insert("t1", name="first")
            session.notify_started(ref)
            session.report_progress(ref, "half way")
            session.notify(ref, TaskState.completed("done"))
            session.insert("t2", queued=True)
            session.cancel("t2")
            batch = session.drain_notifications()
            session.restore_notifications(batch)
            session.drain_notifications()
            session.list()
            session.get("t1")
            session.gc_finished()
            session.cancel_all()
        async with SubagentPool(store.session("s2"), when_full="queue", max_queued=4) as pool:
            pool.spawn(_quick)
            pool.spawn(_quick)
        store.session("{conv}a").insert("moving", close_policy="transfer")
        store.transfer("{conv}a", "{conv}b")
        store.recover()
        store.sessions()
    assert {operation for operation, _ in calls} >= {
        "create", "start", "progress", "finish", "request_cancel", "gc_finished", "lease", "confirm", "restore", "list", "get",
        "cancel_all", "transfer", "recover", "info",
    }
    for operation, keys in calls:
        slots = {cluster_slot(key) for key in keys}
        assert len(slots) == 1, f"{operation} names keys of {len(slots)} slots: {keys}"
        if operation == "transfer":
            assert len(keys) == 7, "a transfer names the two sessions' keys and the first one's event log"


async def _quick() -> str:
    await trio.sleep(0)
    return "quick"


def test_the_demo_runs_on_a_redis_store(url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "followups", "demo", "--store", url, "--relay-dir", str(tmp_path / "relay")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "session over" in result.stdout


def test_the_demo_runs_its_subagents_in_worker_processes_and_delivers_each_result_once(url: str, tmp_path: Path) -> None:
    import re

    demo = subprocess.Popen(
        [sys.executable, "-m", "followups", "demo", "--store", url, "--workers", "2", "--relay-dir", str(tmp_path / "relay")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
    assert demo.returncode == 0, err
    header = re.search(r"in 2 worker processes \(pids (\d+), (\d+)\) of session (\S+),", out)
    assert header, out[:500]
    worker_pids = {int(header.group(1)), int(header.group(2))}
    assert demo.pid not in worker_pids
    delivered = re.findall(r"^\s*\[task (\S+)\] (completed|failed|cancelled): (.*)$", out, re.M)
    ids = [task_id for task_id, _, _ in delivered]
    assert len(ids) == len(set(ids)), f"a result was delivered twice: {sorted(ids)}"
    # six subagents (one refused and started again later), the crawler's child and the shell
    assert len(ids) == 8, ids
    ran_in = {int(pid) for pid in re.findall(r"\(ran in worker pid (\d+)\)", out)}
    assert ran_in == worker_pids, "both workers ran subagents, and only the workers did"
    assert "All 7 background tasks are accounted for: 5 completed, 1 failed, 1 cancelled." in out
    assert "README summary, as asked (Focus on the installation steps.)" in out, "steered across processes"
    with open_store(url, tmp_path) as store:
        session = store.session(header.group(3))
        assert session.pending_notifications() == []
        tasks = session.list()
        assert len(tasks) == 8 and all(task.state.is_finished for task in tasks)


async def test_a_subscriber_sees_the_events_of_another_process(url: str, tmp_path: Path, workers: list[Worker]) -> None:
    from followups import TaskFinished, TaskRegistered

    with open_store(url, tmp_path) as store:
        seen: list[object] = []
        async with store.subscribe("s1") as events:
            finisher = spawn(workers, "finish_one", url, str(tmp_path / "relay"), "s1", "remote")
            with trio.fail_after(20):
                async for event in events:
                    seen.append(event)
                    if isinstance(event, TaskFinished):
                        break
        assert finisher.line() == "done"
        assert isinstance(seen[0], TaskRegistered) and seen[0].task.id == "remote"
        assert isinstance(seen[-1], TaskFinished) and seen[-1].notification.id == "remote"
        assert seen[-1].notification.state.text == "result of remote"


def _away(store: BackgroundStore, client: redis.Redis) -> None:
    """Cut the store's pub/sub connection and keep its watcher from reconnecting until
    ``store.backend._watch_gate`` is set again."""
    backend: Any = store.backend
    backend._watch_gate.clear()
    killed = client.client_kill_filter(_type="pubsub")
    assert killed >= 1


async def test_a_subscriber_gets_the_events_another_process_logged_while_its_reader_was_away(
    url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    from followups import Lagged, TaskFinished, TaskRegistered

    relay = str(tmp_path / "relay")
    with open_store(url, tmp_path) as store:
        async with store.subscribe("s1", buffer=1000) as events:
            spawn(workers, "finish_many", url, relay, "s1", "0", "2").line()  # seen live: the log's position
            seen: list[object] = []
            with trio.fail_after(20):
                while len([e for e in seen if isinstance(e, TaskFinished)]) < 2:
                    seen.append(await events.__anext__())
            _away(store, client)
            assert spawn(workers, "finish_many", url, relay, "s1", "2", "5").line() == "done"
            await trio.sleep(0.2)
            assert events.receive_nowait() is None, "nothing arrives while the reader is away"
            store.backend._watch_gate.set()  # type: ignore[attr-defined]
            with trio.fail_after(20):
                while len([e for e in seen if isinstance(e, TaskFinished)]) < 7:
                    seen.append(await events.__anext__())
            assert spawn(workers, "finish_many", url, relay, "s1", "7", "1").line() == "done"  # live again
            with trio.fail_after(20):
                while len([e for e in seen if isinstance(e, TaskFinished)]) < 8:
                    seen.append(await events.__anext__())
            await trio.sleep(0.2)
            assert events.receive_nowait() is None, "no event twice"
    assert not any(isinstance(e, Lagged) for e in seen)
    finished = [e.notification.id for e in seen if isinstance(e, TaskFinished)]
    assert finished == [f"r{i}" for i in range(8)], "each once, in order"
    registered = [e.task.id for e in seen if isinstance(e, TaskRegistered)]
    assert registered == [f"r{i}" for i in range(8)]


async def test_a_subscriber_that_missed_more_than_the_log_keeps_sees_lagged(
    url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    from followups import Lagged, TaskFinished

    relay = str(tmp_path / "relay")
    with open_store(url, tmp_path, redis_event_stream_length=10) as store:
        async with store.subscribe("s1", buffer=5000) as events:
            spawn(workers, "finish_many", url, relay, "s1", "0", "1", "10").line()
            with trio.fail_after(20):
                while not isinstance(await events.__anext__(), TaskFinished):
                    pass
            _away(store, client)
            # 400 tasks, 800 events: far past the log's bound (trimmed by whole nodes of 100)
            assert spawn(workers, "finish_many", url, relay, "s1", "1", "400", "10").line(timeout=60) == "done"
            store.backend._watch_gate.set()  # type: ignore[attr-defined]
            seen: list[object] = []
            with trio.fail_after(20):
                while not (seen and isinstance(seen[-1], TaskFinished) and seen[-1].notification.id == "r400"):
                    seen.append(await events.__anext__())
    assert isinstance(seen[0], Lagged), seen[0]
    assert not any(isinstance(e, Lagged) for e in seen[1:])
    assert 0 < seen[0].count < 800
    assert seen[0].count + len(seen) - 1 == 800, "every event is either delivered or counted as missed"
    kept = client.xlen(store.backend.event_log_key("s1"))  # type: ignore[attr-defined]
    assert kept < 300, "the log is bounded"


async def test_the_store_wide_cap_holds_across_sessions_and_workers(url: str, tmp_path: Path) -> None:
    from followups import SubagentPool

    running = 0
    peak = 0
    gate = trio.Event()

    async def subagent() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await gate.wait()
            await trio.sleep(0.01)
        finally:
            running -= 1
        return "ok"

    stores = [open_store(url, tmp_path, max_concurrent=2, max_concurrent_total=3) for _ in range(2)]
    try:
        with trio.fail_after(30):
            async with SubagentPool(stores[0].session("a"), when_full="queue", max_queued=8, close="wait") as first:
                async with SubagentPool(stores[1].session("b"), when_full="queue", max_queued=8, close="wait") as second:
                    for _ in range(4):
                        first.spawn(subagent)
                        second.spawn(subagent)
                    await trio.testing.wait_all_tasks_blocked()
                    live = stores[0].list_all(status="running")
                    assert len(live) == 3, "three run across both sessions, though each session's cap is 2"
                    assert len(stores[0].list_all(status="queued")) == 5
                    gate.set()
        assert peak == 3
        delivered = stores[0].session("a").drain_notifications() + stores[1].session("b").drain_notifications()
        assert len(delivered) == 8 and {n.state.text for n in delivered} == {"ok"}
    finally:
        for store in stores:
            store.close()


def test_store_wide_slots_reserved_by_killed_workers_are_given_back_once(
    url: str, tmp_path: Path, workers: list[Worker], client: redis.Redis
) -> None:
    from followups import SubagentPool

    prefix = url.partition("prefix=")[2]
    total_key, reserved_key = f"{{{prefix}}}:total", f"{{{prefix}}}:total-reserved"

    def running() -> int:
        return int(client.hget(total_key, "running") or 0)

    async def main() -> None:
        gate = trio.Event()

        async def subagent() -> str:
            await gate.wait()
            return "ok"

        store = open_store(url, tmp_path, worker_ttl_seconds=1.0, max_concurrent=4, max_concurrent_total=3)
        with store, trio.fail_after(30):
            async with SubagentPool(store.session("c"), when_full="queue", max_queued=8, close="wait") as pool:
                pool.spawn(subagent)
                assert running() == 1
                # one worker dies holding a reservation no run took, the other after its run
                # took the slot but before it settled the reservation
                before_create = spawn(workers, "reserve_and_die", url, str(tmp_path / "relay"), "a", "before_create")
                before_settle = spawn(workers, "reserve_and_die", url, str(tmp_path / "relay"), "b", "before_settle")
                assert before_create.line().startswith("stopped")
                assert before_settle.line().startswith("stopped")
                assert running() == 3 and client.hlen(reserved_key) == 2
                for worker in (before_create, before_settle):
                    worker.process.send_signal(signal.SIGKILL)
                    worker.wait()
                # this store's heartbeat passes orphan the second worker's run (its slot
                # freed) and give back the first worker's unused reservation, each once
                while not (client.hlen(reserved_key) == 0 and running() == 1):
                    await trio.sleep(0.05)
                orphaned = store.session("b").list()
                assert [t.state.status.value for t in orphaned] == ["failed"]
                assert "orphaned" in orphaned[0].state.text
                assert store.session("a").list() == [], "the first worker never created its run"
                # the two slots are free again: two more run, a third waits for the cap
                for _ in range(3):
                    pool.spawn(subagent)
                await trio.testing.wait_all_tasks_blocked()
                assert len(store.session("c").list(status="running")) == 3
                assert len(store.session("c").list(status="queued")) == 1
                assert running() == 3
                gate.set()
        assert running() == 0

    trio.run(main)


def test_redis_urls_name_the_server_and_the_key_prefix() -> None:
    from followups.ledger.redis import parse_redis_url

    assert parse_redis_url("redis://127.0.0.1:6379/2?prefix=app") == ("redis://127.0.0.1:6379/2", "app")
    assert parse_redis_url("rediss://user:secret@cache:6380/0") == ("rediss://user:secret@cache:6380/0", "followups")
    assert parse_redis_url("redis://h:1/0?prefix=p&socket_keepalive=true") == ("redis://h:1/0?socket_keepalive=true", "p")
    with pytest.raises(ValueError, match="prefix must be non-empty"):
        parse_redis_url("redis://h:1/0?prefix={x}")
    with pytest.raises(ValueError, match="names no known backend"):
        BackgroundStore.open("rediz://h:1/0")


async def test_a_cancel_published_while_the_owners_listener_was_away_still_reaches_it(
    url: str, tmp_path: Path, client: redis.Redis
) -> None:
    from followups import SubagentPool

    owner = open_store(url, tmp_path)
    other = open_store(url, tmp_path)
    ended = trio.Event()

    async def forever() -> str:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()
        return "never"

    backend = owner.backend
    dispatch = backend._dispatch  # type: ignore[attr-defined]
    lost = threading.Event()
    deaf = True

    def listener_away(effects: list[object]) -> None:
        # the owner's listener misses what arrives while it is "away": the cancel is dropped
        if deaf and threading.current_thread().name == "followups-redis-watch":
            lost.set()
            return
        dispatch(effects)

    backend._dispatch = listener_away  # type: ignore[attr-defined]
    try:
        async with SubagentPool(owner.session("s1")) as pool:
            task_id = pool.spawn(forever)
            await trio.testing.wait_all_tasks_blocked()
            assert other.session("s1").cancel(task_id)
            assert await trio.to_thread.run_sync(lost.wait, 15), "the cancel never reached the owner's listener"
            deaf = False
            client.client_kill_filter(_type="pubsub")  # the listener reconnects and catches up
            with trio.fail_after(15):
                await ended.wait()
        assert owner.session("s1").get(task_id).state.status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    finally:
        owner.close()
        other.close()


def test_opening_a_store_on_an_unreachable_server_names_it(tmp_path: Path) -> None:
    from redis_server import free_port

    port = free_port()
    with pytest.raises(StoreUnavailable, match=rf"127\.0\.0\.1:{port}"):
        open_store(f"redis://127.0.0.1:{port}/0", tmp_path, redis_timeout_seconds=0.5)
