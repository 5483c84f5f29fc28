"""Figures for the SQLite ledger backend, as ratios against a raw-``sqlite3`` floor.

1. ``sqlite finish+lease+confirm`` -- per task [subject/floor <= 1.5x], at ``synchronous``
   NORMAL (the default) and, for reference, FULL. Subject: ``SqliteBackend`` on a fresh file;
   N runs are created before the timed region, then for each one ``finish`` (a small completed
   state), ``lease`` of the session's one available notification, and ``confirm``: three
   transactions per task. Floor: the same three transactions written directly with
   ``sqlite3`` on a file in WAL mode with the same ``synchronous`` level and the backend's own
   schema (tables and indexes), with the fewest statements: ``UPDATE`` the run's changed
   columns and ``INSERT`` its notification; ``SELECT`` the available ones, ``INSERT`` the lease
   and mark them; ``SELECT`` the lease's entries, ``DELETE`` them and the lease.
2. ``sqlite operation latency`` -- the median time of one ``finish``, ``lease`` and
   ``confirm`` at NORMAL, in microseconds: what an event loop waits when it calls the backend
   inline (``blocking = False`` at NORMAL). Reported, no target.
3. ``sqlite reload`` -- how long the first operation after another process's commit takes,
   for a store of 100 and of 1,000 records (half finished and pending): the backend rebuilds
   its mirror from the file. Reported, no target.
4. ``sqlite cross-process wake-up`` -- a trio waiter in this process
   (``wait_for_notification``) on a task a child process finishes: from the moment the child is
   told to report to the moment the waiter returns, median of R rounds. It includes the child's
   transaction and the watcher's ``PRAGMA data_version`` poll (every 20 ms). Reported, no target.

Timing: one warm-up round, then 15 rounds (5 with ``--quick``) that each time the floor and the
subject back to back (the order switches every round). A line gives the median per-task times
and the median of the rounds' ratios, with the rounds' min-max.

Usage::

    python benchmarks/sqlite_figures.py [--quick] [--check]

``--check`` makes the exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from followups.bounding import report_digest
from followups.ledger.protocol import CreateRequest, FinishReport, LeaseRequest
from followups.ledger.sqlite import _MIGRATIONS, SqliteBackend
from followups.state import RunRef, TaskState

TARGET_RATIO = 1.5


class _Listener:
    wants_events = False

    def apply(self, effects: object) -> None:
        pass


def _subject(directory: Path, count: int, synchronous: str) -> tuple[float, list[float]]:
    """Seconds for ``count`` finish+lease+confirm cycles on a SqliteBackend, and per-op times
    (finish, lease, confirm) of the cycles, in seconds."""
    backend = SqliteBackend(directory / f"subject-{uuid.uuid4().hex[:6]}.db", synchronous=synchronous)
    epoch = backend.connect(_Listener(), now=0.0)
    refs: list[RunRef] = []
    for index in range(count):
        admission = backend.create(
            CreateRequest(session="bench", task_id=f"t{index}", epoch=epoch, now=0.0, capacity=count + 1, max_pending=count + 1)
        )
        refs.append(admission.ref)
    state = TaskState.completed("small result")
    digest = report_digest(state)
    request = LeaseRequest(epoch=epoch, now=1.0, lease_seconds=600.0)
    ops: list[float] = []
    clock = time.perf_counter
    gc.collect()
    started = clock()
    for ref in refs:
        a = clock()
        backend.finish(ref, FinishReport(state, digest, 1.0))
        b = clock()
        lease = backend.lease("bench", request)
        c = clock()
        assert lease is not None and len(lease.notifications) == 1
        backend.confirm(lease.id, now=1.0)
        d = clock()
        ops.extend((b - a, c - b, d - c))
    elapsed = clock() - started
    backend.close()
    return elapsed, ops


def _floor(directory: Path, count: int, synchronous: str) -> float:
    """Seconds for the same three transactions per task, written directly with sqlite3 on the
    backend's own schema (its tables and indexes), with the fewest statements that do them."""
    conn = sqlite3.connect(directory / f"floor-{uuid.uuid4().hex[:6]}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(_MIGRATIONS[1])
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO runs VALUES (?, 'bench', ?, 'bench', 'running', '', '', 'subagent', NULL, NULL, 'cancel', 'e', "
        "0, 0, 0.0, NULL, NULL, NULL, NULL, NULL, '', 0, NULL, NULL, 0, 0, '[]', 0, ?, 0)",
        [(i + 1, f"t{i}", i + 1) for i in range(count)],
    )
    conn.execute("COMMIT")
    state = TaskState.completed("small result")
    digest = report_digest(state)
    execute = conn.execute
    gc.collect()
    started = time.perf_counter()
    for index in range(count):
        generation = index + 1
        task_id = f"t{index}"
        execute("BEGIN IMMEDIATE")
        execute(
            "UPDATE runs SET status = ?, text = ?, finished_at = ?, digest = ?, relay_path = ?, version = ?, "
            "finish_order = ? WHERE generation = ?",
            (state.status.value, state.text, 1.0, digest, None, 1, count + generation, generation),
        )
        execute(
            "INSERT INTO entries VALUES ('bench', ?, 0, ?, ?, ?, ?, ?, 'result', 1, NULL, NULL)",
            (generation, task_id, state.status.value, state.text, generation, f"{generation}.1"),
        )
        execute("COMMIT")
        lease_id = uuid.uuid4().hex
        execute("BEGIN IMMEDIATE")
        rows = execute(
            "SELECT generation, slot, task_id, status, text, sequence, notification_id, version FROM entries "
            "WHERE session = 'bench' AND lease_id IS NULL ORDER BY sequence"
        ).fetchall()
        execute(
            "INSERT INTO leases VALUES (?, ?, 'e', 0, ?)",
            (lease_id, 601.0, json.dumps([["bench", r[0], r[1], r[7]] for r in rows])),
        )
        execute(
            "UPDATE entries SET lease_id = ? WHERE session = 'bench' AND generation = ? AND slot = ?",
            (lease_id, rows[0][0], rows[0][1]),
        )
        execute("COMMIT")
        execute("BEGIN IMMEDIATE")
        json.loads(execute("SELECT entries FROM leases WHERE id = ?", (lease_id,)).fetchone()[0])
        execute("DELETE FROM entries WHERE lease_id = ? AND version = 1", (lease_id,))
        execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def _rounds(rounds: int, floor: Callable[[], float], subject: Callable[[], float]) -> tuple[list[float], list[float]]:
    floor()
    subject()  # warm-up
    floors: list[float] = []
    subjects: list[float] = []
    for index in range(rounds):
        if index % 2:
            subjects.append(subject())
            floors.append(floor())
        else:
            floors.append(floor())
            subjects.append(subject())
    return floors, subjects


def _line(name: str, floors: list[float], subjects: list[float], count: int, target: float | None) -> tuple[str, bool]:
    ratios = [s / f for f, s in zip(floors, subjects, strict=True)]
    ratio = statistics.median(ratios)  # each round's pair ran back to back: drift cancels within it
    per_floor = statistics.median(floors) / count * 1e6
    per_subject = statistics.median(subjects) / count * 1e6
    ok = target is None or ratio <= target
    verdict = "" if target is None else (f"[target <= {target}x] " + ("PASS" if ok else "MISS"))
    return (
        f"{name}: subject {per_subject:.1f} us/task, floor {per_floor:.1f} us/task, ratio {ratio:.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x) {verdict}".rstrip(),
        ok,
    )


_WAKE_CHILD = r"""
import sys, time
from followups import BackgroundStore, FollowupSettings, TaskState
store = BackgroundStore.open(sys.argv[1], FollowupSettings(relay_dir=sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    store.session("bench").notify(line.strip(), TaskState.completed("done"))
store.close()
"""


def _wake_latencies(directory: Path, rounds: int) -> list[float]:
    import trio

    url = f"sqlite:///{directory / 'wake.db'}"
    from followups import BackgroundStore, FollowupSettings

    settings = FollowupSettings(relay_dir=directory / "relay")
    latencies: list[float] = []
    with BackgroundStore.open(url, settings) as store:
        session = store.session("bench")
        child = subprocess.Popen(
            [sys.executable, "-c", _WAKE_CHILD, url, str(directory / "relay")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"

        async def measure() -> None:
            for index in range(rounds + 1):
                task_id = f"w{index}"
                session.insert(task_id)
                await trio.sleep(0.01)  # let the watcher settle after our own write
                started = time.perf_counter()
                child.stdin.write(task_id + "\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                with trio.fail_after(10):
                    assert await session.wait_for_notification()
                if index:  # the first round is a warm-up
                    latencies.append(time.perf_counter() - started)
                session.drain_notifications()

        trio.run(measure)
        child.stdin.close()
        child.wait(timeout=10)
    return latencies


def _reload_times(directory: Path, sizes: Sequence[int], rounds: int) -> list[tuple[int, float]]:
    """Seconds one backend takes to see another's commit, for stores of ``sizes`` records (half
    of them finished with a pending notification): the mirror is rebuilt from the file."""
    results: list[tuple[int, float]] = []
    state = TaskState.completed("small result")
    digest = report_digest(state)
    for size in sizes:
        path = directory / f"reload-{size}.db"
        writer = SqliteBackend(path)
        reader = SqliteBackend(path)
        epoch = writer.connect(_Listener(), now=0.0)
        reader.connect(_Listener(), now=0.0)
        for index in range(size):
            admission = writer.create(
                CreateRequest(session=f"s{index % 10}", task_id=f"t{index}", epoch=epoch, now=0.0, capacity=size, max_pending=size)
            )
            if index % 2:
                writer.finish(admission.ref, FinishReport(state, digest, 1.0))
        times = []
        for _ in range(rounds):
            # what the first operation after another connection's commit does (timed directly:
            # the reader's own watcher would otherwise do it in the background first)
            reader._tx.acquire()
            try:
                started = time.perf_counter()
                reader._conn.execute("BEGIN")
                reader._load()
                reader._conn.execute("COMMIT")
                times.append(time.perf_counter() - started)
            finally:
                reader._tx.release()
        results.append((size, statistics.median(times)))
        writer.close()
        reader.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    count = 300 if args.quick else 600
    rounds = 5 if args.quick else 15
    failed = False
    with tempfile.TemporaryDirectory(prefix="followups-sqlite-bench-") as name:
        directory = Path(name)
        op_times: list[float] = []
        for synchronous, target in (("NORMAL", TARGET_RATIO), ("FULL", None)):
            n = count if synchronous == "NORMAL" else max(50, count // 10)

            def subject(sync: str = synchronous, n: int = n) -> float:
                elapsed, ops = _subject(directory, n, sync)
                if sync == "NORMAL":
                    op_times.extend(ops)
                return elapsed

            floors, subjects = _rounds(rounds, lambda s=synchronous, n=n: _floor(directory, n, s), subject)
            text, ok = _line(f"sqlite finish+lease+confirm ({synchronous})", floors, subjects, n, target)
            print(text)
            failed |= not ok
            for path in directory.glob("*.db*"):
                if path.is_file():
                    path.unlink()
        finish, lease, confirm = (sorted(op_times[i::3]) for i in range(3))
        print(
            "sqlite operation latency (NORMAL): "
            + ", ".join(
                f"{label} {statistics.median(values) * 1e6:.0f} us (p99 {values[int(len(values) * 0.99)] * 1e6:.0f} us)"
                for label, values in (("finish", finish), ("lease", lease), ("confirm", confirm))
            )
        )
        reloads = _reload_times(directory, (100, 1000), 5 if args.quick else 11)
        print(
            "sqlite reload after another process's commit: "
            + ", ".join(f"{size} records {seconds * 1e3:.1f} ms" for size, seconds in reloads)
        )
        latencies = _wake_latencies(directory, 10 if args.quick else 30)
        print(
            f"sqlite cross-process wake-up: median {statistics.median(latencies) * 1e3:.1f} ms "
            f"(min-max {min(latencies) * 1e3:.1f}-{max(latencies) * 1e3:.1f} ms, {len(latencies)} rounds; "
            f"poll interval 20 ms)"
        )
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
