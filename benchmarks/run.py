"""Speed and memory benchmarks for ``followups``, reported as ratios against in-script floors.

The machine these run on is shared and noisy, so no figure is an absolute time. Each speed
figure times a *subject* (the package doing the work) against a *floor* (the least code that
does the same logical work, written in this script) in the same run, and reports the ratio.

How the timing works (see :func:`interleaved`): one untimed warm-up round, then 7 rounds
(5 with ``--quick``); every round times the floor once and the subject once, with
``time.perf_counter``, alternating which goes first so drift hits both equally. Inputs are
built before the timed region, files are deleted after it, and ``gc.collect()`` runs before
each timed run (the garbage collector stays enabled while timing: collections a run provokes
are part of its cost). A figure reports the **median** of the 7 floor times, the **median**
of the 7 subject times, and the ratio of those medians.

Figures (target in brackets):

1. ``store``  -- insert + notify + drain per task [subject/floor <= 2x].
   Subject: ``BackgroundStore(FollowupSettings(relay_dir=tmp, capacity=N))``; for each of N
   (50,000) pre-built ids, ``insert(id)``, ``notify(id, TaskState.completed("small result"))``
   (one pre-built state object), and ``drain_notifications()`` every 32 tasks and at the end.
   Floor: ``BareStore``, the same three calls over a dict of records and a
   ``collections.deque`` of pending ``(id, state)`` entries, with a set for the
   one-entry-per-task de-duplication; no lock, no events, no eviction. For reference the line
   also gives the ratio against the same logical work written inline with no method calls.
2. ``render`` -- rendering a 32-notification follow-up reminder [subject/floor <= 3x].
   Subject: ``ReminderRenderer().render_followup(notifications)``, 32 notifications with
   ~200-character texts, completed/failed/cancelled in turn, including everything the renderer
   does for safety (the inputs' checks and the neutralization of the template's output).
   Floor: f-strings building the same text; the script asserts once that both outputs are
   identical. Each timed run renders the reminder 2,000 times. The line also gives the range of
   the per-round ratios.
3. ``relay``  -- relaying a 10 MB output [floor_time/subject_time >= 0.8x, a throughput
   ratio]. Subject: ``OutputRelay(settings).relay_if_large("task-x", text)`` for a 10 MB str of
   ~100-character ASCII lines, a fresh text every round. Floor: ``open(path, "w",
   encoding="utf-8").write(text)`` of a fresh text of the same content into the same directory
   (the same bytes, including the str -> bytes encoding). Both files are deleted after every
   run. The line also gives the range of the per-round ratios.
4. ``pool``   -- 10,000 trivial subagents with a cap of 4 [subject/floor <= 2x].
   Subject: under ``trio.run``, ``SubagentPool(store, max_concurrent=4, when_full="queue",
   max_queued=10_000, close="wait")`` spawning 10,000 ``async def trivial(): return "ok"``
   and waiting for them all. Floor: an anyio task group (under trio) starting 10,000 tasks
   that each do ``async with anyio.CapacityLimiter(4)`` (shared) and discard ``"ok"``. Both
   timed runs include ``trio.run``'s own start-up, which is small and common to both.
5. ``memory`` -- 2,000 finished tasks with 1 MB outputs, relayed to files and never drained
   [peak RSS < 100 MiB]. Runs in a fresh child process (this script with ``--memory-child``)
   so the parent's allocations do not count; the child reports its peak RSS right after its
   imports and at the end, checks that 2,000 notifications are pending and that every relayed
   file exists. On Linux the peak is ``VmHWM`` from ``/proc/self/status``: a child's
   ``ru_maxrss`` starts at the parent's RSS at spawn time (the kernel carries the high-water
   mark across fork and exec), so it is printed for reference only; elsewhere ``ru_maxrss``. The outputs (~2 GB) go to a temporary
   directory that is deleted afterwards; the figure is skipped when less than 5 GB is free.

Usage (from the project root, with the dev virtualenv)::

    python benchmarks/run.py            # full run, well under 3 minutes
    python benchmarks/run.py --quick    # smaller sizes, a smoke run of under ~20 s
    python benchmarks/run.py --check    # exit status 1 if any target is missed

Without ``--check`` the exit status is 0 even when a target is missed: the output is a report.
It prints one line per figure (the measured numbers, the ratio, the target, PASS/MISS/SKIP)
and then one line describing the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
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

MIB = 1024 * 1024
FREE_DISK_NEEDED = 5 * 10**9


# -- sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """The workload of one run: full by default, smaller with ``--quick``."""

    rounds: int
    store_tasks: int
    render_repeats: int
    relay_bytes: int
    pool_subagents: int
    memory_tasks: int


FULL = Sizes(
    rounds=7,
    store_tasks=50_000,
    render_repeats=2_000,
    relay_bytes=10 * 10**6,
    pool_subagents=10_000,
    memory_tasks=2_000,
)
QUICK = Sizes(
    rounds=5,
    store_tasks=10_000,
    render_repeats=300,
    relay_bytes=2 * 10**6,
    pool_subagents=2_000,
    memory_tasks=200,
)


# -- the shared timing helper ------------------------------------------------------------------


@dataclass
class Trial:
    """One timed run: ``run`` is timed; ``cleanup`` runs afterwards, untimed."""

    run: Callable[[], object]
    cleanup: Callable[[], None] = field(default=lambda: None)


Prepare = Callable[[], Trial]
"""Builds a fresh :class:`Trial` (inputs, stores, directories) outside the timed region."""


@dataclass(frozen=True)
class Timing:
    """The per-round times of a floor and a subject, in seconds."""

    floor: tuple[float, ...]
    subject: tuple[float, ...]

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor)

    @property
    def subject_median(self) -> float:
        return statistics.median(self.subject)

    @property
    def slowdown(self) -> float:
        """Median subject time over median floor time: 1.0 means as fast as the floor."""
        return self.subject_median / self.floor_median


def _time_once(prepare: Prepare) -> float:
    trial = prepare()
    gc.collect()
    try:
        start = time.perf_counter()
        trial.run()
        return time.perf_counter() - start
    finally:
        trial.cleanup()


def interleaved(floor: Prepare, subject: Prepare, rounds: int, *, warmup: int = 1) -> Timing:
    """Time ``floor`` and ``subject`` alternately: ``warmup`` untimed rounds, then ``rounds``
    rounds of one run each, the one that goes first alternating from round to round."""
    for _ in range(warmup):
        _time_once(floor)
        _time_once(subject)
    floor_times: list[float] = []
    subject_times: list[float] = []
    for round_index in range(rounds):
        order = ((floor, floor_times), (subject, subject_times))
        for prepare, times in order if round_index % 2 == 0 else reversed(order):
            times.append(_time_once(prepare))
    return Timing(tuple(floor_times), tuple(subject_times))


# -- reporting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One line of the report. ``value`` is compared with ``target`` using ``op``;
    ``value is None`` means the figure was skipped (``measured`` says why)."""

    name: str
    measured: str
    value: float | None
    op: Literal["<=", ">=", "<"]
    target: float
    unit: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        if self.op == "<=":
            return self.value <= self.target
        if self.op == ">=":
            return self.value >= self.target
        return self.value < self.target

    def line(self) -> str:
        verdict = {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]
        shown = "-" if self.value is None else f"{self.value:.2f}{self.unit}"
        target = f"{self.op} {self.target:g}{self.unit}"
        return f"{self.name:<7} {shown:>9}  target {target:<10} {verdict}  | {self.measured}"


def ratio_figure(name: str, timing: Timing, unit_work: float, unit: str, scale: float, target: float) -> Figure:
    """A slowdown figure (subject/floor, lower is better) with both medians per unit of work."""
    per_floor = timing.floor_median / unit_work * scale
    per_subject = timing.subject_median / unit_work * scale
    measured = f"floor {per_floor:9.3f} {unit}  subject {per_subject:9.3f} {unit}"
    return Figure(name, measured, timing.slowdown, "<=", target, "x")


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load n/a"
    return (
        f"machine: {platform.platform()} | Python {platform.python_version()} | "
        f"{os.cpu_count()} CPUs ({cpu}) | trio {importlib.metadata.version('trio')} | "
        f"anyio {importlib.metadata.version('anyio')} | {load}"
    )


# -- figure 1: store ---------------------------------------------------------------------------

DRAIN_EVERY = 32


class _FloorRecord:
    __slots__ = ("state",)

    def __init__(self, state: TaskState) -> None:
        self.state = state


class BareStore:
    """The floor: the store's three calls over a bare dict and deque, with a set for the
    one-entry-per-task de-duplication. No lock, no events, no eviction, no relay."""

    __slots__ = ("pending", "pending_ids", "records")

    def __init__(self) -> None:
        self.records: dict[str, _FloorRecord] = {}
        self.pending: deque[tuple[str, TaskState]] = deque()
        self.pending_ids: set[str] = set()

    def insert(self, id: str) -> None:
        self.records[id] = _FloorRecord(_RUNNING)

    def notify(self, id: str, state: TaskState) -> None:
        self.records[id].state = state
        if id not in self.pending_ids:
            self.pending_ids.add(id)
            self.pending.append((id, state))

    def drain_notifications(self) -> list[tuple[str, TaskState]]:
        drained = list(self.pending)
        self.pending.clear()
        self.pending_ids.clear()
        return drained


_RUNNING = TaskState.running()


def _store_work(store: BackgroundStore | BareStore, ids: Sequence[str], state: TaskState) -> None:
    """The measured work, identical for floor and subject: insert, notify, drain every 32."""
    for count, id in enumerate(ids, 1):
        store.insert(id)
        store.notify(id, state)
        if count % DRAIN_EVERY == 0:
            store.drain_notifications()
    store.drain_notifications()


def _inline_store_work(ids: Sequence[str], state: TaskState) -> None:
    """The same logical work written inline, without even method calls (for reference)."""
    records: dict[str, _FloorRecord] = {}
    pending: deque[tuple[str, TaskState]] = deque()
    pending_ids: set[str] = set()
    for count, id in enumerate(ids, 1):
        records[id] = _FloorRecord(_RUNNING)
        records[id].state = state
        if id not in pending_ids:
            pending_ids.add(id)
            pending.append((id, state))
        if count % DRAIN_EVERY == 0:
            list(pending)
            pending.clear()
            pending_ids.clear()


def bench_store(sizes: Sizes, workdir: Path) -> Figure:
    tasks = sizes.store_tasks
    ids = [f"task-{i:06d}" for i in range(tasks)]
    state = TaskState.completed("small result")
    settings = FollowupSettings(relay_dir=workdir / "store-relay", capacity=tasks)

    def floor() -> Trial:
        bare = BareStore()
        return Trial(lambda: _store_work(bare, ids, state))

    def subject() -> Trial:
        store = BackgroundStore(settings)
        return Trial(lambda: _store_work(store, ids, state))

    def inline() -> Trial:
        return Trial(lambda: _inline_store_work(ids, state))

    timing = interleaved(floor, subject, sizes.rounds)
    reference = interleaved(inline, subject, sizes.rounds)
    figure = ratio_figure("store", timing, tasks, "us/task", 1e6, 2.0)
    inline_us = reference.floor_median / tasks * 1e6
    return dataclasses.replace(
        figure,
        measured=f"{figure.measured}  (vs the same work inlined, no calls: {inline_us:.3f} us, "
        f"{reference.slowdown:.2f}x)",
    )


# -- figure 2: render --------------------------------------------------------------------------

REMINDER_HEAD = "<system-reminder>\nThe following background tasks finished since your last turn:\n"
REMINDER_TAIL = "</system-reminder>"


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


def round_ratios(timing: Timing, *, throughput: bool) -> str:
    """The per-round ratios' range, as ``min-max``, in the figure's own sense."""
    ratios = [
        (floor / subject if throughput else subject / floor)
        for floor, subject in zip(timing.floor, timing.subject, strict=True)
    ]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def bench_render(sizes: Sizes, workdir: Path) -> Figure:
    del workdir  # rendering touches no files
    notifications = reminder_notifications()
    renderer = ReminderRenderer()
    expected = renderer.render_followup(notifications)
    if floor_reminder(notifications) != expected:
        raise AssertionError("the render floor does not build the renderer's text; the comparison is void")
    repeats = range(sizes.render_repeats)

    def floor() -> Trial:
        return Trial(lambda: [floor_reminder(notifications) for _ in repeats])

    def subject() -> Trial:  # inputs checked, template rendered, output neutralized: all of it
        return Trial(lambda: [renderer.render_followup(notifications) for _ in repeats])

    timing = interleaved(floor, subject, sizes.rounds)
    figure = ratio_figure("render", timing, sizes.render_repeats, "us/render", 1e6, 3.0)
    rounds = round_ratios(timing, throughput=False)
    return dataclasses.replace(figure, measured=f"{figure.measured}  (rounds {rounds})")


# -- figure 3: relay ---------------------------------------------------------------------------


def ascii_lines(total_chars: int, seed: int = 0) -> str:
    """About ``total_chars`` of ~100-character ASCII lines, each ending in a newline; the
    ``seed`` goes into every line, so texts of different seeds share no line."""
    line_body = f"subagent output {seed:04d} line {{:08d}} " + "lorem ipsum dolor sit amet " * 3
    lines = [(line_body.format(i)[:99] + "\n") for i in range(total_chars // 100)]
    return "".join(lines)


def bench_relay(sizes: Sizes, workdir: Path) -> Figure:
    """Each round builds a fresh text (untimed) for the floor and, separately, another fresh
    copy of the same content for the subject: neither finds its input in a cache, and no
    round reuses another's text, as real outputs never repeat."""
    relay_dir = workdir / "relay"
    relay = OutputRelay(FollowupSettings(relay_dir=relay_dir))
    relay.relay_if_large("warm-up", "x\n" * 1000)  # creates the directory, does the first sweep
    for leftover in relay_dir.iterdir():
        leftover.unlink()
    floor_rounds, subject_rounds = iter(range(10**6)), iter(range(10**6))

    def floor() -> Trial:
        path = relay_dir / "floor-output.txt"
        text = ascii_lines(sizes.relay_bytes, next(floor_rounds))

        def write() -> None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)

        return Trial(write, lambda: path.unlink())

    def subject() -> Trial:
        text = ascii_lines(sizes.relay_bytes, next(subject_rounds))

        def relay_output() -> None:
            if relay.relay_if_large("task-x", text).path is None:
                raise RuntimeError("the 10 MB output was not relayed to a file")

        def remove_relayed() -> None:
            for relayed in relay_dir.iterdir():
                relayed.unlink()

        return Trial(relay_output, remove_relayed)

    timing = interleaved(floor, subject, sizes.rounds)
    megabytes = sizes.relay_bytes / 1e6
    measured = (
        f"floor {megabytes / timing.floor_median:7.0f} MB/s   subject "
        f"{megabytes / timing.subject_median:7.0f} MB/s ({megabytes:.0f} MB, fresh every round; "
        f"floor/subject time; rounds {round_ratios(timing, throughput=True)})"
    )
    return Figure("relay", measured, 1 / timing.slowdown, ">=", 0.8, "x")


# -- figure 4: pool ----------------------------------------------------------------------------

POOL_CAP = 4


async def trivial() -> str:
    return "ok"


async def _floor_pool(subagents: int) -> None:
    limiter = anyio.CapacityLimiter(POOL_CAP)

    async def worker() -> None:
        async with limiter:
            await trivial()

    async with anyio.create_task_group() as task_group:
        for _ in range(subagents):
            task_group.start_soon(worker)


async def _subject_pool(store: BackgroundStore, subagents: int) -> None:
    async with SubagentPool(
        store, max_concurrent=POOL_CAP, when_full="queue", max_queued=subagents, close="wait"
    ) as pool:
        for _ in range(subagents):
            pool.spawn(trivial)


def bench_pool(sizes: Sizes, workdir: Path) -> Figure:
    subagents = sizes.pool_subagents
    settings = FollowupSettings(
        relay_dir=workdir / "pool-relay", capacity=subagents + POOL_CAP, max_concurrent=POOL_CAP
    )

    def floor() -> Trial:
        return Trial(lambda: trio.run(_floor_pool, subagents))

    def subject() -> Trial:
        store = BackgroundStore(settings)

        def run() -> None:
            trio.run(_subject_pool, store, subagents)
            if store.pending_count() != subagents:
                raise RuntimeError(f"{store.pending_count()} of {subagents} subagents reported")

        return Trial(run)

    timing = interleaved(floor, subject, sizes.rounds)
    return ratio_figure("pool", timing, subagents, "us/task", 1e6, 2.0)


# -- figure 5: memory --------------------------------------------------------------------------

MEMORY_TARGET_MIB = 100.0
_FOOTER_PATH = re.compile(r"saved to (.+?\.txt)\. Use the")


def peak_rss_kib() -> tuple[int, str]:
    """This process's peak RSS in KiB and where it was read.

    ``ru_maxrss`` of a spawned child starts at the parent's RSS at spawn time (Linux keeps the
    high-water mark across fork and exec), so where ``/proc/self/status`` exists its
    ``VmHWM`` (the peak of this process image only) is used instead.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def memory_child(tmpdir: str, tasks: int) -> None:
    """Run in a fresh process: fill a store with ``tasks`` relayed 1 MB outputs, print JSON."""
    baseline_kib, source = peak_rss_kib()
    relay_dir = Path(tmpdir) / "relay"
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, capacity=tasks, relay_max_total_bytes=4 * 1024**3))
    for i in range(tasks):
        line = f"task {i:06d} output line " + "x" * 999 + "\n"  # 1 KiB, unique to this task
        output = line * 1024  # 1 MiB, built fresh for every task
        store.insert(f"task-{i}")
        store.notify(f"task-{i}", TaskState.completed(output))
        del output, line
    peak_kib, _ = peak_rss_kib()
    ru_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pending = store.pending_count()
    notifications = store.drain_notifications()  # read after the peak was taken
    paths = {match.group(1) for n in notifications if (match := _FOOTER_PATH.search(n.state.text))}
    existing = sum(1 for path in paths if os.path.isfile(path))
    report = {
        "source": source,
        "baseline_kib": baseline_kib,
        "peak_kib": peak_kib,
        "ru_maxrss_kib": ru_maxrss_kib,
        "pending": pending,
        "files": existing,
    }
    print(json.dumps(report))


def bench_memory(sizes: Sizes, workdir: Path) -> Figure:
    del workdir  # the child writes ~2 GB, so it gets its own directory, removed at the end
    tasks = sizes.memory_tasks
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < FREE_DISK_NEEDED:
        reason = f"skipped: only {free / 1e9:.1f} GB free in {tempfile.gettempdir()}, need 5 GB"
        return Figure("memory", reason, None, "<", MEMORY_TARGET_MIB, "MiB")
    with tempfile.TemporaryDirectory(prefix="followups-bench-memory-") as tmpdir:
        completed = subprocess.run(
            [sys.executable, __file__, "--memory-child", tmpdir, "--memory-tasks", str(tasks)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"memory child failed ({completed.returncode}):\n{completed.stderr}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if report["pending"] != tasks or report["files"] != tasks:
        raise RuntimeError(
            f"memory child: {report['pending']} pending notifications and {report['files']} relay "
            f"files, expected {tasks} of each"
        )
    baseline, peak = report["baseline_kib"] / 1024, report["peak_kib"] / 1024
    measured = (
        f"{report['source']}: after imports {baseline:5.1f} MiB, peak {peak:5.1f} MiB "
        f"(ru_maxrss {report['ru_maxrss_kib'] / 1024:.1f}); {tasks} pending, {tasks} files"
    )
    return Figure("memory", measured, peak, "<", MEMORY_TARGET_MIB, "MiB")


# -- main ----------------------------------------------------------------------------------------

BENCHMARKS: tuple[Callable[[Sizes, Path], Figure], ...] = (
    bench_store,
    bench_render,
    bench_relay,
    bench_pool,
    bench_memory,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Speed (as ratios against in-script floors) and memory benchmarks for followups."
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    parser.add_argument("--memory-child", metavar="TMPDIR", help=argparse.SUPPRESS)
    parser.add_argument("--memory-tasks", type=int, default=FULL.memory_tasks, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_tasks)
        return 0

    sizes = QUICK if args.quick else FULL
    print(
        f"followups benchmarks ({'quick' if args.quick else 'full'}): median of {sizes.rounds} "
        f"interleaved rounds after 1 warm-up; ratio = subject/floor unless noted"
    )
    figures: list[Figure] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="followups-bench-") as workdir:
        for benchmark in BENCHMARKS:
            figure = benchmark(sizes, Path(workdir))
            figures.append(figure)
            print(figure.line(), flush=True)
    print(machine_description())
    print(f"total {time.perf_counter() - started:.1f} s")
    missed = [figure.name for figure in figures if figure.passed is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
