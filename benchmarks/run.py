"""Benchmarks for ``followups``: every figure as a ratio against a floor built in this script.

The machine these run on is shared and noisy, so no figure is an absolute time. Each figure
times a *subject* (the package doing the work) and a *floor* (the least code that does the
same logical work, written here) in the same run, and reports their ratio.

Timing (:func:`interleaved`): one untimed warm-up round, then ``--rounds`` rounds (5 by
default); every round times the floor once and the subject once with ``time.perf_counter``,
alternating which goes first. Inputs are built before the timed region and removed after it;
``gc.collect()`` runs before each timed run, and the collector stays on while timing (the
collections a run provokes are part of its cost). Each round gives one ratio; a figure reports
the **median** of those ratios and their **min-max**. Memory figures run in fresh child
processes (this script with ``--child``), so the parent's allocations do not count; RSS is read
from ``/proc/self/status`` (``VmRSS``, ``VmHWM``) where it exists, else ``ru_maxrss``.

The figures and their targets (issue 10):

==========  =====================================================  ===========================
figure      floor                                                  target
==========  =====================================================  ===========================
take        take + confirm of a reminder at 100 pending            50,000 pending: <= 2x
sessions    10,000 minimal dict-based records                      build time and RSS <= 2x
            (sessions-rss)
store       a minimal store with a lock, an LRU preferring         <= 1.5x
            finished records and a tuple snapshot
store-bare  a bare dict + deque                                    <= 3x
relay       a plain write of a fresh 10 MB text                    >= 0.8x throughput
stall       the loop's stall during a 1 MB plain write on a thread <= 2x, and <= 5 ms
render      f-strings building the same 32-notification reminder  <= 3x
turn        a loop turn with an inline tool                        a turn spawning: <= 1.5x
memory      the import baseline (peak RSS)                         <= 3x; <= 4 KiB a result
pool        cap workers pulling from a queue (cap 4 and 64)        <= 4x
==========  =====================================================  ===========================

Each figure's function says exactly what the subject and the floor do.

After its own figures, the script runs every ``benchmarks/*_figures.py`` module that has a
``main(argv: list[str] | None = None) -> int`` (the durable backends' figures), passing
``--check`` through: a non-zero status is a failure. A module whose optional dependency is not
installed (``ImportError``) is skipped with a message.

Usage (from the project root, with the dev virtualenv)::

    python benchmarks/run.py            # every figure, a few minutes on 2 cores
    python benchmarks/run.py --check    # exit status 1 if any target is missed
    python benchmarks/run.py --only take,render   # some figures (and no *_figures modules)
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import trio

from followups import (
    BackgroundStore,
    FollowupSettings,
    OutputRelay,
    ReminderRenderer,
    SubagentPool,
    TaskNotification,
    TaskState,
)
from followups.delivery import take_followup
from followups.loop import AgentLoop, AssistantMessage, ScriptedModel, tool_call
from followups.tools import TaskArgs, Tool, ToolOutcome, task_tools

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024
KIB = 1024


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One timed run: ``run`` is timed; ``cleanup`` runs afterwards, untimed."""

    run: Callable[[], object]
    cleanup: Callable[[], None] = field(default=lambda: None)


Prepare = Callable[[], Trial]
"""Builds a fresh :class:`Trial` (inputs, stores, directories) outside the timed region."""


def _time_once(prepare: Prepare) -> float:
    trial = prepare()
    gc.collect()
    try:
        start = time.perf_counter()
        trial.run()
        return time.perf_counter() - start
    finally:
        trial.cleanup()


@dataclass(frozen=True)
class Timing:
    """Per-round times of a floor and a subject, in seconds."""

    floor: tuple[float, ...]
    subject: tuple[float, ...]

    def ratios(self) -> list[float]:
        """Subject time over floor time, one per round (higher is slower)."""
        return [s / f for f, s in zip(self.floor, self.subject, strict=True)]


def interleaved(floor: Prepare, subject: Prepare, rounds: int) -> Timing:
    """One untimed warm-up of each, then ``rounds`` rounds of one run each, alternating which
    goes first."""
    _time_once(floor)
    _time_once(subject)
    floor_times: list[float] = []
    subject_times: list[float] = []
    for index in range(rounds):
        order = [(floor, floor_times), (subject, subject_times)]
        if index % 2:
            order.reverse()
        for prepare, times in order:
            times.append(_time_once(prepare))
    return Timing(tuple(floor_times), tuple(subject_times))


# -- reporting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One line of the table. ``values`` are the per-round measurements (ratios, or the
    absolute values of a figure that has no floor); the median is compared with ``target``."""

    name: str
    floor: str
    target: float
    op: Literal["<=", ">="]
    values: tuple[float, ...] | None
    unit: str = "x"
    detail: str = ""

    @property
    def median(self) -> float | None:
        return None if self.values is None else statistics.median(self.values)

    @property
    def passed(self) -> bool | None:
        median = self.median
        if median is None:
            return None
        return median <= self.target if self.op == "<=" else median >= self.target

    def row(self) -> tuple[str, ...]:
        verdict = {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]
        if self.values is None:
            measured, spread = "-", "-"
        else:
            measured = f"{self.median:.2f}{self.unit}"
            spread = f"{min(self.values):.2f}-{max(self.values):.2f}{self.unit}"
        return (self.name, self.floor, f"{self.op} {self.target:g}{self.unit}", measured, spread, verdict, self.detail)


HEADER = ("figure", "floor", "target", "median", "min-max", "verdict", "detail")


def print_row(row: Sequence[str]) -> None:
    widths = (11, 52, 10, 9, 13, 7)
    cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
    print("  ".join(cells) + "  " + row[-1], flush=True)


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or cpu
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load n/a"
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}) | Python {platform.python_version()} | "
        f"{platform.platform()} | trio {importlib.metadata.version('trio')} | "
        f"anyio {importlib.metadata.version('anyio')} | jinja2 {importlib.metadata.version('jinja2')} | {load}"
    )


def _us(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e6:.2f}"


def _medians(timing: Timing, count: int, unit: str = "us") -> str:
    return (
        f"floor {_us(statistics.median(timing.floor), count)} {unit}, "
        f"subject {_us(statistics.median(timing.subject), count)} {unit}"
    )


# -- memory helpers ----------------------------------------------------------------------------


def rss_kib() -> tuple[int, int, str]:
    """This process's current and peak RSS in KiB, and where they were read.

    A child's ``ru_maxrss`` starts at its parent's RSS at spawn time on Linux, so
    ``/proc/self/status`` (``VmRSS`` and ``VmHWM``, this process image only) is used where it
    exists."""
    current = peak = 0
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        if current and peak:
            return current, peak, "VmRSS/VmHWM"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak, peak, "ru_maxrss"


def run_child(kind: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run this script as ``--child kind args...`` in a fresh interpreter; its JSON report."""
    completed = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child {kind!r} failed ({completed.returncode}):\n{completed.stderr}")
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


# -- figure: take ------------------------------------------------------------------------------

TAKES = 5
PER_TAKE = 20


def _take_text(settings: FollowupSettings, store: BackgroundStore) -> str:
    """A text such that one reminder carries exactly ``PER_TAKE`` of them within the budget."""
    from followups.delivery import followup_item_overhead

    overhead = followup_item_overhead(store.renderer) + len("task-000000")
    # the frame (head and tail) takes some of the budget too
    frame = len(store.renderer.render_followup([], remaining=99_999))
    weight = (settings.reminder_budget_chars - frame) // PER_TAKE - 1
    return ("The subagent read the files, ran the checks and summarised what it found. " * 40)[: weight - overhead]


def _pending_store(workdir: Path, pending: int) -> BackgroundStore:
    settings = FollowupSettings(relay_dir=workdir / "take-relay", max_pending=max(pending, 100) + 10)
    store = BackgroundStore(settings)
    state = TaskState.completed(_take_text(settings, store))
    for i in range(pending):
        task_id = f"task-{i:06d}"
        store.insert(task_id)
        store.notify(task_id, state)
    return store


def _take_and_confirm(store: BackgroundStore) -> None:
    delivered = 0
    for _ in range(TAKES):
        delivery = take_followup(store)
        if delivery is None:
            raise RuntimeError("nothing pending to take")
        delivered += len(delivery.notifications)
        delivery.confirm()
    if delivered != TAKES * PER_TAKE:
        raise RuntimeError(f"{TAKES} takes delivered {delivered} notifications, expected {TAKES * PER_TAKE}")


def bench_take(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: on a store holding 50,000 pending notifications, ``take_followup`` and
    ``confirm`` five times, each reminder carrying 20 notifications (texts sized so that 20 fit
    the default 32,000-character budget). Floor: the same five take + confirm on a store holding
    100 pending. Both stores are built untimed, fresh for every run."""
    big, small = 50_000, 100

    def floor() -> Trial:
        store = _pending_store(workdir, small)
        return Trial(lambda: _take_and_confirm(store), store.close)

    def subject() -> Trial:
        store = _pending_store(workdir, big)
        return Trial(lambda: _take_and_confirm(store), store.close)

    timing = interleaved(floor, subject, rounds)
    return [
        Figure(
            "take",
            "take + confirm of a reminder at 100 pending",
            2.0,
            "<=",
            tuple(timing.ratios()),
            detail=f"50,000 pending; per reminder of {PER_TAKE}: {_medians(timing, TAKES)}",
        )
    ]


# -- figure: sessions --------------------------------------------------------------------------

SESSIONS = 10_000


def _sessions_floor(ids: Sequence[str], now: Callable[[], float]) -> dict[str, dict[str, dict[str, object]]]:
    """10,000 minimal records: per session, a dict of its one task's record as a dict."""
    sessions: dict[str, dict[str, dict[str, object]]] = {}
    for session_id in ids:
        sessions[session_id] = {"task-1": {"status": "running", "description": "", "created_at": now()}}
    return sessions


def _sessions_subject(store: BackgroundStore, ids: Sequence[str]) -> None:
    for session_id in ids:
        store.session(session_id).insert("task-1")


def sessions_child(kind: str, workdir: str) -> None:
    """In a fresh process: build 10,000 sessions (subject or floor) and report the RSS they add."""
    ids = [f"conversation-{i:06d}" for i in range(SESSIONS)]
    store = BackgroundStore(FollowupSettings(relay_dir=Path(workdir) / "sessions-relay"))
    store.session("warm-up").insert("task-1")
    gc.collect()
    before, _, source = rss_kib()
    start = time.perf_counter()
    if kind == "floor":
        kept: object = _sessions_floor(ids, time.time)
    else:
        _sessions_subject(store, ids)
        kept = store
    elapsed = time.perf_counter() - start
    gc.collect()
    after, _, _ = rss_kib()
    print(json.dumps({"kib": after - before, "seconds": elapsed, "source": source, "kept": id(kept) > 0}))


def bench_sessions(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: ``store.session(id).insert("task-1")`` for 10,000 new session ids on one store
    (the memory backend): 10,000 conversations with one background task each. Floor: 10,000
    minimal dict-based records, ``sessions[id] = {"task-1": {"status": ..., "description": ...,
    "created_at": time.time()}}``. Time is interleaved in this process; RSS is what each adds
    in a fresh child process, one child per round and side."""
    ids = [f"conversation-{i:06d}" for i in range(SESSIONS)]
    settings = FollowupSettings(relay_dir=workdir / "sessions-relay")

    def floor() -> Trial:
        return Trial(lambda: _sessions_floor(ids, time.time))

    def subject() -> Trial:
        store = BackgroundStore(settings)
        return Trial(lambda: _sessions_subject(store, ids), store.close)

    timing = interleaved(floor, subject, rounds)
    memory_ratios = []
    floor_kib = subject_kib = 0.0
    for _ in range(max(3, rounds // 2)):
        floor_report = run_child("sessions", "floor", str(workdir))
        subject_report = run_child("sessions", "subject", str(workdir))
        floor_kib, subject_kib = floor_report["kib"], subject_report["kib"]
        memory_ratios.append(subject_kib / max(floor_kib, 1))
    return [
        Figure(
            "sessions",
            "10,000 minimal dict-based records: build time",
            2.0,
            "<=",
            tuple(timing.ratios()),
            detail=f"per session: {_medians(timing, SESSIONS)}",
        ),
        Figure(
            "sessions-rss",
            "10,000 minimal dict-based records: RSS",
            2.0,
            "<=",
            tuple(memory_ratios),
            detail=f"last round: floor {floor_kib / 1024:.1f} MiB, subject {subject_kib / 1024:.1f} MiB",
        ),
    ]


# -- figure: store -----------------------------------------------------------------------------

STORE_TASKS = 50_000
STORE_CAPACITY = 1_000
DRAIN_EVERY = 32


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The floor's notification: an immutable snapshot, as a frozen slotted dataclass."""

    id: str
    state: TaskState
    sequence: int


class _MinimalRecord:
    __slots__ = ("id", "state")

    def __init__(self, id: str, state: TaskState) -> None:
        self.id = id
        self.state = state


_RUNNING_STATE = TaskState.running()


class MinimalStore:
    """The store floor with the guarantees: one lock around each call, a capacity-bounded
    record table whose eviction prefers the record that finished longest ago (live records by
    age only when none has finished), one pending entry per task, an immutable snapshot per
    notification, and a lease that holds taken entries until confirmed. No validation, no
    events, no sessions, no relay."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.records: dict[str, _MinimalRecord] = {}
        self.live: OrderedDict[str, None] = OrderedDict()
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.pending: dict[str, _Snapshot] = {}
        self.leases: dict[int, tuple[_Snapshot, ...]] = {}
        self.sequence = 0

    def insert(self, id: str) -> None:
        with self.lock:
            if id not in self.records and len(self.records) >= self.capacity:
                if self.finished:
                    victim, _ = self.finished.popitem(last=False)
                else:
                    victim, _ = self.live.popitem(last=False)
                del self.records[victim]
            self.records[id] = _MinimalRecord(id, _RUNNING_STATE)
            self.live[id] = None

    def notify(self, id: str, state: TaskState) -> None:
        with self.lock:
            record = self.records.get(id)
            if record is None or record.state == state:
                return
            record.state = state
            self.live.pop(id, None)
            self.finished[id] = None
            self.sequence += 1
            self.pending[id] = _Snapshot(id, state, self.sequence)

    def lease(self) -> int:
        with self.lock:
            taken = tuple(self.pending.values())
            self.pending.clear()
            self.sequence += 1
            self.leases[self.sequence] = taken
            return self.sequence

    def confirm(self, lease: int) -> int:
        with self.lock:
            return len(self.leases.pop(lease, ()))

    def drain_notifications(self) -> int:
        return self.confirm(self.lease())


class BareStore:
    """The bare floor: a dict of records and a deque of pending ``(id, state)``, with a set for
    one entry per task. No lock, no eviction, no snapshot."""

    def __init__(self) -> None:
        self.records: dict[str, TaskState] = {}
        self.pending: deque[tuple[str, TaskState]] = deque()
        self.pending_ids: set[str] = set()

    def insert(self, id: str) -> None:
        self.records[id] = _RUNNING_STATE

    def notify(self, id: str, state: TaskState) -> None:
        self.records[id] = state
        if id not in self.pending_ids:
            self.pending_ids.add(id)
            self.pending.append((id, state))

    def drain_notifications(self) -> int:
        drained = len(self.pending)
        self.pending.clear()
        self.pending_ids.clear()
        return drained


def _store_work(store: Any, ids: Sequence[str], state: TaskState) -> None:
    """The measured work, identical for floors and subject: insert, finish, and a lease +
    confirm (a drain) every 32 tasks and at the end."""
    insert, notify, drain = store.insert, store.notify, store.drain_notifications
    for count, id in enumerate(ids, 1):
        insert(id)
        notify(id, state)
        if count % DRAIN_EVERY == 0:
            drain()
    drain()


def bench_store(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: ``BackgroundStore`` (memory backend, capacity 1,000): for each of 50,000 ids,
    ``insert``, ``notify`` with one completed state, and ``drain_notifications`` (a lease and
    its confirm) every 32 tasks. Floors: :class:`MinimalStore` and :class:`BareStore` doing the
    same calls."""
    ids = [f"task-{i:06d}" for i in range(STORE_TASKS)]
    state = TaskState.completed("small result")
    settings = FollowupSettings(relay_dir=workdir / "store-relay", capacity=STORE_CAPACITY)

    def minimal() -> Trial:
        store = MinimalStore(STORE_CAPACITY)
        return Trial(lambda: _store_work(store, ids, state))

    def bare() -> Trial:
        store = BareStore()
        return Trial(lambda: _store_work(store, ids, state))

    def subject() -> Trial:
        store = BackgroundStore(settings)
        return Trial(lambda: _store_work(store, ids, state), store.close)

    against_minimal = interleaved(minimal, subject, rounds)
    against_bare = interleaved(bare, subject, rounds)
    return [
        Figure(
            "store",
            "a minimal store: lock, LRU preferring finished, snapshot",
            1.5,
            "<=",
            tuple(against_minimal.ratios()),
            detail=f"per task: {_medians(against_minimal, STORE_TASKS)}",
        ),
        Figure(
            "store-bare",
            "a bare dict + deque",
            3.0,
            "<=",
            tuple(against_bare.ratios()),
            detail=f"per task: {_medians(against_bare, STORE_TASKS)}",
        ),
    ]


# -- figure: relay -----------------------------------------------------------------------------

RELAY_BYTES = 10 * 10**6


def ascii_lines(total_chars: int, seed: int) -> str:
    """About ``total_chars`` of ~100-character ASCII lines; texts of different seeds share no
    line, so no round finds its input in a cache."""
    body = f"subagent output {seed:06d} line {{:08d}} " + "lorem ipsum dolor sit amet " * 3
    return "".join(body.format(i)[:99] + "\n" for i in range(total_chars // 100))


def bench_relay(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: ``OutputRelay(settings).relay_if_large("task-x", text)`` of a fresh 10 MB text
    of ~100-character ASCII lines. Floor: ``open(path, "w", encoding="utf-8").write(text)`` of
    another fresh text of the same size into the same directory. Texts are built untimed and
    never reused; files are removed after each run. Throughput ratio: floor time / subject time."""
    relay_dir = workdir / "relay"
    relay = OutputRelay(FollowupSettings(relay_dir=relay_dir))
    relay.relay_if_large("warm-up", "x\n" * 1000)
    for leftover in relay_dir.iterdir():
        leftover.unlink()
    seeds = iter(range(10**6))

    def floor() -> Trial:
        path = relay_dir / "floor-output.txt"
        text = ascii_lines(RELAY_BYTES, next(seeds))

        def write() -> None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)

        return Trial(write, path.unlink)

    def subject() -> Trial:
        text = ascii_lines(RELAY_BYTES, next(seeds))

        def relay_output() -> None:
            if relay.relay_if_large("task-x", text).path is None:
                raise RuntimeError("the 10 MB output was not relayed to a file")

        def remove() -> None:
            for relayed in relay_dir.iterdir():
                relayed.unlink()

        return Trial(relay_output, remove)

    timing = interleaved(floor, subject, rounds)
    megabytes = RELAY_BYTES / 1e6
    throughput = tuple(1 / ratio for ratio in timing.ratios())
    return [
        Figure(
            "relay",
            "a plain write of the same-size fresh text",
            0.8,
            ">=",
            throughput,
            detail=(
                f"floor {megabytes / statistics.median(timing.floor):.0f} MB/s, subject "
                f"{megabytes / statistics.median(timing.subject):.0f} MB/s"
            ),
        )
    ]


# -- figure: stall -----------------------------------------------------------------------------


async def _worst_stall(work: Callable[[Callable[[], None]], Any]) -> float:
    """The longest the loop went without running a ready task while ``work(restart)`` ran: a
    ticker task yields to the loop in a tight loop and records the longest gap between its
    turns since ``work`` last called ``restart()``."""
    done = False
    worst = 0.0
    last = time.perf_counter()

    def restart() -> None:
        nonlocal worst, last
        worst = 0.0
        last = time.perf_counter()

    async def ticker() -> None:
        nonlocal worst, last
        while not done:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.005)
        try:
            await work(restart)
        finally:
            await trio.sleep(0.005)
            done = True
    return worst


def stall_floor(workdir: Path, seed: int) -> float:
    text = ascii_lines(10**6, seed)
    path = workdir / "stall-floor.txt"

    def write() -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    async def work(restart: Callable[[], None]) -> None:
        restart()
        await anyio.to_thread.run_sync(write)

    try:
        return trio.run(_worst_stall, work)
    finally:
        path.unlink(missing_ok=True)


def stall_subject(workdir: Path, seed: int) -> float:
    relay_dir = workdir / "stall-relay"
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir))
    text = ascii_lines(RELAY_BYTES, seed)

    async def work(restart: Callable[[], None]) -> None:
        release = trio.Event()

        async def subagent() -> str:
            await release.wait()
            return text

        async with SubagentPool(store, close="wait") as pool:
            pool.spawn(subagent)
            await trio.sleep(0.005)  # the subagent has started and waits
            restart()
            release.set()  # from here on: its result is reported, and the pool closes

    try:
        worst = trio.run(_worst_stall, work)
        notifications = store.drain_notifications()
        if len(notifications) != 1 or "saved to" not in notifications[0].state.text:
            raise RuntimeError("the 10 MB result was not relayed")
        return worst
    finally:
        store.close()
        shutil.rmtree(relay_dir, ignore_errors=True)


def bench_stall(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: under ``trio.run``, a ``SubagentPool`` subagent that has started returns a fresh
    10 MB text, which the pool reports (bounded and relayed off the loop) before the pool
    closes; a ticker task on the same loop records the longest gap between its turns from the
    return on. Floor: the same ticker while
    ``anyio.to_thread.run_sync`` writes a fresh 1 MB text with a plain ``open(..., "w")
    .write``. Four pairs per round (each takes milliseconds, and on a busy machine the floor
    itself varies most). Also: the subject's absolute stall stays within 5 ms."""
    floor_stalls: list[float] = []
    subject_stalls: list[float] = []
    stall_floor(workdir, 0)
    stall_subject(workdir, 1)
    for index in range(rounds * 4):  # cheap rounds, and the noisiest figure: more of them
        floor_stalls.append(stall_floor(workdir, 10 + index))
        subject_stalls.append(stall_subject(workdir, 100 + index))
    ratios = tuple(s / f for f, s in zip(floor_stalls, subject_stalls, strict=True))
    return [
        Figure(
            "stall",
            "the loop's stall during a 1 MB plain write on a thread",
            2.0,
            "<=",
            ratios,
            detail=(
                f"floor {statistics.median(floor_stalls) * 1e3:.2f} ms, "
                f"subject {statistics.median(subject_stalls) * 1e3:.2f} ms"
            ),
        ),
        Figure(
            "stall-abs",
            "none: the subject's stall itself",
            5.0,
            "<=",
            tuple(stall * 1e3 for stall in subject_stalls),
            unit=" ms",
            detail="10 MB result reported through the pool",
        ),
    ]


# -- figure: render ----------------------------------------------------------------------------

REMINDER_HEAD = "<system-reminder>\nThe following background tasks finished since your last turn:\n"
REMINDER_TAIL = "</system-reminder>"
RENDER_REPEATS = 2_000


def reminder_notifications(count: int = 32) -> list[TaskNotification]:
    """``count`` notifications with ~200-character texts, completed/failed/cancelled in turn."""
    builders = (TaskState.completed, TaskState.failed, TaskState.cancelled)
    notifications = []
    for i in range(count):
        text = (f"Result {i}: the subagent read the files, ran the checks and summarised them. " * 3)[:200]
        notifications.append(TaskNotification(f"t{i}", builders[i % 3](text)))
    return notifications


def floor_reminder(notifications: Sequence[TaskNotification]) -> str:
    """The follow-up reminder built with f-strings (for texts that need no neutralizing)."""
    body = "".join(f"\n[task {n.id}] {n.state.status.value}: {n.state.text}\n" for n in notifications)
    return f"{REMINDER_HEAD}{body}{REMINDER_TAIL}"


def bench_render(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: ``ReminderRenderer().render_followup(notifications)`` for 32 notifications with
    ~200-character texts, everything the renderer does for safety included (the inputs' checks,
    the neutralization of the output). Floor: f-strings building the identical text (checked
    once). Each run renders 2,000 times."""
    notifications = reminder_notifications()
    renderer = ReminderRenderer()
    if floor_reminder(notifications) != renderer.render_followup(notifications):
        raise AssertionError("the render floor does not build the renderer's text; the comparison is void")
    repeats = range(RENDER_REPEATS)

    def floor() -> Trial:
        return Trial(lambda: [floor_reminder(notifications) for _ in repeats])

    def subject() -> Trial:
        return Trial(lambda: [renderer.render_followup(notifications) for _ in repeats])

    timing = interleaved(floor, subject, rounds)
    return [
        Figure(
            "render",
            "f-strings building the same 32-notification reminder",
            3.0,
            "<=",
            tuple(timing.ratios()),
            detail=f"per render: {_medians(timing, RENDER_REPEATS)}",
        )
    ]


# -- figure: turn ------------------------------------------------------------------------------

TURNS = 400


async def _trivial_subagent(request: object) -> str:
    return "ok"


def _script() -> list[AssistantMessage | str]:
    return [AssistantMessage(tool_calls=[tool_call("task", description="check", prompt="check it")]), "done"]


async def _turns_inline(turns: int) -> None:
    def inline(args: TaskArgs) -> ToolOutcome:
        return ToolOutcome("ok")

    tools = [Tool("task", "Do a piece of work.", TaskArgs, inline)]
    for _ in range(turns):
        await AgentLoop(ScriptedModel(_script()), tools).run("go")


async def _turns_spawning(store: BackgroundStore, turns: int) -> None:
    async with SubagentPool(store, when_full="queue", close="wait") as pool:
        tools = task_tools(pool, _trivial_subagent)
        for _ in range(turns):
            await AgentLoop(ScriptedModel(_script()), tools).run("go")


def bench_turn(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: 400 turns of ``AgentLoop`` under ``trio.run``; in each the scripted model calls
    the ``task`` tool of :func:`task_tools` (which spawns a trivial subagent in a
    ``SubagentPool``), then ends the turn; the pool waits for every subagent at the end.
    Floor: the same 400 turns where the ``task`` tool (the same ``TaskArgs`` parameters)
    returns its result inline."""
    settings = FollowupSettings(relay_dir=workdir / "turn-relay", capacity=1024, max_pending=TURNS + 10)

    def floor() -> Trial:
        return Trial(lambda: trio.run(_turns_inline, TURNS))

    def subject() -> Trial:
        store = BackgroundStore(settings)

        def run() -> None:
            trio.run(_turns_spawning, store, TURNS)
            if store.pending_count() != TURNS:
                raise RuntimeError(f"{store.pending_count()} of {TURNS} subagents reported")

        return Trial(run, store.close)

    timing = interleaved(floor, subject, rounds)
    return [
        Figure(
            "turn",
            "the same turn with an inline tool",
            1.5,
            "<=",
            tuple(timing.ratios()),
            detail=f"per turn: {_medians(timing, TURNS)}",
        )
    ]


# -- figure: memory ----------------------------------------------------------------------------

MEMORY_RESULTS = 20_000
MEMORY_FILE_BYTES = 64 * 1024
FREE_DISK_NEEDED = 3 * 10**9


def memory_child(tmpdir: str, results: int) -> None:
    """In a fresh process: finish ``results`` tasks with fresh 1 MB outputs, relayed and never
    drained; report the RSS after imports and at the peak."""
    _, baseline, source = rss_kib()
    settings = FollowupSettings(
        relay_dir=Path(tmpdir) / "relay",
        capacity=results,
        max_pending=results,
        relay_max_file_bytes=MEMORY_FILE_BYTES,
        relay_max_total_bytes=4 * 1024**3,
    )
    store = BackgroundStore(settings)
    for i in range(results):
        line = f"task {i:06d} output line " + "x" * 999 + "\n"  # 1 KiB, unique to this task
        output = line * 1024  # 1 MiB, fresh for every task
        store.insert(f"task-{i}")
        store.notify(f"task-{i}", TaskState.completed(output))
        del output, line
    gc.collect()
    _, peak, _ = rss_kib()
    pending = store.pending_count()
    relayed = sum(1 for n in store.pending_notifications() if "saved to" in n.state.text)
    print(json.dumps({"source": source, "baseline_kib": baseline, "peak_kib": peak, "pending": pending, "relayed": relayed}))


def bench_memory(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: in a fresh process, 20,000 tasks each finish with a fresh 1 MiB output (1,024
    lines of 1 KiB), relayed to files and never drained (``relay_max_file_bytes`` 64 KiB, so a
    file keeps head and tail and the disk holds about 1.3 GB rather than 20 GB). Floor: the
    same process's peak RSS right after its imports. Also: the per-result cost, (peak -
    baseline) / 20,000, within 4 KiB."""
    del rounds  # one child: 20,000 results take a while, and the figure is not noisy
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < FREE_DISK_NEEDED:
        reason = f"skipped: {free / 1e9:.1f} GB free in {tempfile.gettempdir()}, need 3 GB"
        return [Figure("memory", "the import baseline", 3.0, "<=", None, detail=reason)]
    with tempfile.TemporaryDirectory(prefix="followups-bench-memory-") as tmpdir:
        report = run_child("memory", tmpdir, str(MEMORY_RESULTS))
    if report["pending"] != MEMORY_RESULTS or report["relayed"] != MEMORY_RESULTS:
        raise RuntimeError(f"memory child: {report}")
    baseline, peak = report["baseline_kib"], report["peak_kib"]
    per_result = (peak - baseline) / MEMORY_RESULTS
    return [
        Figure(
            "memory",
            "the import baseline (peak RSS)",
            3.0,
            "<=",
            (peak / baseline,),
            detail=f"{report['source']}: baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB",
        ),
        Figure(
            "memory-per",
            "none: (peak - baseline) per undrained result",
            4.0,
            "<=",
            (per_result,),
            unit=" KiB",
            detail=f"{MEMORY_RESULTS} pending, all relayed",
        ),
    ]


# -- figure: pool ------------------------------------------------------------------------------

POOL_SUBAGENTS = 10_000


async def _trivial() -> str:
    return "ok"


async def _floor_pool(subagents: int, cap: int, texts: list[str]) -> None:
    """``cap`` workers pulling jobs from a queue; then the results rendered with f-strings in
    reminders of 32."""
    jobs: deque[int] = deque(range(subagents))
    results: list[tuple[str, TaskState]] = []

    async def worker() -> None:
        while jobs:
            index = jobs.popleft()
            value = await _trivial()
            results.append((f"task-{index}", TaskState.completed(value)))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(cap):
            nursery.start_soon(worker)
    for start in range(0, len(results), 32):
        batch = results[start : start + 32]
        body = "".join(f"\n[task {id}] {state.status.value}: {state.text}\n" for id, state in batch)
        texts.append(f"{REMINDER_HEAD}{body}{REMINDER_TAIL}")


async def _subject_pool(store: BackgroundStore, subagents: int, cap: int, texts: list[str]) -> None:
    async with SubagentPool(store, max_concurrent=cap, when_full="queue", max_queued=subagents, close="wait") as pool:
        for _ in range(subagents):
            pool.spawn(_trivial)
    while (delivery := take_followup(store)) is not None:
        texts.append(delivery.text)
        delivery.confirm()


def bench_pool(rounds: int, workdir: Path) -> list[Figure]:
    """Subject: under ``trio.run``, ``SubagentPool(max_concurrent=cap, when_full="queue",
    close="wait")`` runs 10,000 ``async def trivial(): return "ok"``; then every notification
    is delivered with ``take_followup`` + ``confirm``. Floor: ``cap`` worker tasks pulling the
    10,000 jobs from a deque, each keeping ``(id, TaskState)``, then the results rendered with
    f-strings in reminders of 32. For cap 4 and cap 64."""
    figures = []
    for cap in (4, 64):
        settings = FollowupSettings(
            relay_dir=workdir / "pool-relay",
            capacity=POOL_SUBAGENTS + cap,
            max_concurrent=cap,
            max_pending=POOL_SUBAGENTS + 10,
        )

        def floor(cap: int = cap) -> Trial:
            texts: list[str] = []
            return Trial(lambda: trio.run(_floor_pool, POOL_SUBAGENTS, cap, texts))

        def subject(cap: int = cap, settings: FollowupSettings = settings) -> Trial:
            store = BackgroundStore(settings)
            texts: list[str] = []

            def run() -> None:
                trio.run(_subject_pool, store, POOL_SUBAGENTS, cap, texts)
                if store.pending_count() or not texts:
                    raise RuntimeError("the pool's results were not all delivered")

            return Trial(run, store.close)

        timing = interleaved(floor, subject, rounds)
        figures.append(
            Figure(
                f"pool-{cap}",
                f"{cap} workers pulling from a queue, f-string reminders",
                4.0,
                "<=",
                tuple(timing.ratios()),
                detail=f"per subagent: {_medians(timing, POOL_SUBAGENTS)}",
            )
        )
    return figures


# -- other modules' figures --------------------------------------------------------------------


def run_figure_modules(check: bool, directory: Path = BENCH_DIR) -> list[tuple[str, str]]:
    """Run every ``*_figures.py`` of ``directory`` exposing ``main(argv) -> int``, with
    ``["--check"]`` when ``check``; returns ``(module, verdict)`` pairs, the verdict ``PASS``,
    ``FAIL (status N)`` or ``SKIP: why`` (no ``main``, or an ``ImportError``: an optional
    dependency is not installed). Any other exception propagates."""
    outcomes: list[tuple[str, str]] = []
    for path in sorted(directory.glob("*_figures.py")):
        name = path.stem
        print(f"\n== {name} ==", flush=True)
        try:
            # Under its own name, with its directory on sys.path: a child process it starts
            # with the "spawn" method imports it again by that name to find its target.
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                outcomes.append((name, "FAIL (cannot be loaded)"))
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look modules up there
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[spec.name]
                raise
            main_fn = getattr(module, "main", None)
            if not callable(main_fn):
                print(f"{name}: no main(argv) function; not a figures module, skipped", flush=True)
                outcomes.append((name, "SKIP: no main(argv)"))
                continue
            status = main_fn(["--check"] if check else [])
        except ImportError as exc:
            print(f"{name}: skipped, an optional dependency is missing: {exc}", flush=True)
            outcomes.append((name, f"SKIP: {exc}"))
            continue
        outcomes.append((name, "PASS" if status == 0 else f"FAIL (status {status})"))
    return outcomes


# -- main ----------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[int, Path], list[Figure]]] = {
    "take": bench_take,
    "sessions": bench_sessions,
    "store": bench_store,
    "relay": bench_relay,
    "stall": bench_stall,
    "render": bench_render,
    "turn": bench_turn,
    "memory": bench_memory,
    "pool": bench_pool,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="followups benchmarks: ratios against in-script floors.")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per figure (default 5)")
    parser.add_argument("--only", help="comma-separated figures to run (skips the *_figures modules)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "sessions":
            sessions_child(rest[0], rest[1])
        elif kind == "memory":
            memory_child(rest[0], int(rest[1]))
        else:
            parser.error(f"unknown child {kind!r}")
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    chosen = list(BENCHMARKS) if args.only is None else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown figures {', '.join(unknown)}; the figures are {', '.join(BENCHMARKS)}")

    print(f"followups benchmarks: median and min-max of {args.rounds} interleaved rounds after a warm-up")
    print(machine_description(), flush=True)
    print_row(HEADER)
    figures: list[Figure] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="followups-bench-") as workdir:
        for name in chosen:
            for figure in BENCHMARKS[name](args.rounds, Path(workdir)):
                figures.append(figure)
                print_row(figure.row())
    print(f"total {time.perf_counter() - started:.1f} s")
    missed = [figure.name for figure in figures if figure.passed is False]
    if missed:
        print(f"missed: {', '.join(missed)}")
    module_failures: list[str] = []
    if args.only is None:
        for module, verdict in run_figure_modules(args.check):
            print(f"{module}: {verdict}")
            if verdict.startswith("FAIL"):
                module_failures.append(module)
    if not args.check:
        return 0
    return 1 if missed or module_failures else 0


if __name__ == "__main__":
    sys.exit(main())
