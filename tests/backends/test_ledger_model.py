"""The ledger against a naive reference model, driven by hypothesis through random histories:
insert (new ids and reused ones), reports from current and superseded runs, leases, confirm,
give back, lease expiry and cancel_all, with eviction at a small capacity. Runs on every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from helpers import FakeClock, StoreFactory

from followups import FollowupSettings, RunRef, TaskState, TaskStatus

CAPACITY = 4
LEASE_SECONDS = 60.0
IDS = st.sampled_from([f"t{i}" for i in range(6)])
FINAL_STATES = st.builds(
    TaskState,
    st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]),
    st.sampled_from(["a", "b", "c"]),
)


@dataclass
class Run:
    task_id: str
    ref: RunRef
    state: TaskState = field(default_factory=TaskState.running)
    created: int = 0
    finished: int | None = None
    sealed: bool = False
    last_report: TaskState | None = None
    version: int = 0


@dataclass
class Entry:
    run: Run
    state: TaskState
    version: int
    sequence: int
    lease: int | None = None


@dataclass
class ModelLease:
    store_id: str
    items: list[tuple[int, int]]  # (generation, version)
    expired: bool = False


@dataclass
class Reference:
    """Lists, dicts and linear scans: obviously right, and slow."""

    records: dict[str, Run] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)  # every run ever, for stale reports
    pending: dict[int, Entry] = field(default_factory=dict)  # by generation
    leases: dict[int, ModelLease] = field(default_factory=dict)
    tick: int = 0
    sequence: int = 0

    def now(self) -> int:
        self.tick += 1
        return self.tick

    def insert(self, task_id: str, ref: RunRef) -> None:
        existing = self.records.get(task_id)
        if existing is None and len(self.records) >= CAPACITY:
            finished = [run for run in self.records.values() if run.finished is not None]
            victim = (
                min(finished, key=lambda run: run.finished or 0)
                if finished
                else min(self.records.values(), key=lambda run: run.created)
            )
            del self.records[victim.task_id]
        run = Run(task_id, ref, created=self.now())
        self.records[task_id] = run
        self.runs.append(run)

    def finish(self, run: Run, state: TaskState) -> bool:
        if self.records.get(run.task_id) is not run or run.sealed or run.last_report == state:
            return False
        if not run.state.is_finished:
            run.finished = self.now()
        run.state = state
        run.last_report = state
        run.version += 1
        entry = self.pending.get(run.ref.generation)
        if entry is None:
            self.sequence += 1
            self.pending[run.ref.generation] = Entry(run, state, run.version, self.sequence)
        else:
            entry.state, entry.version, entry.lease = state, run.version, None
        return True

    def available(self) -> list[Entry]:
        return sorted(
            (e for e in self.pending.values() if e.lease is None or self.leases[e.lease].expired),
            key=lambda e: e.sequence,
        )

    def lease(self, number: int, limit: int | None) -> list[Entry]:
        taken = self.available()[:limit]
        for entry in taken:
            entry.lease = number
        return taken

    def confirm(self, number: int) -> None:
        lease = self.leases.pop(number)
        for generation, version in lease.items:
            entry = self.pending.get(generation)
            if entry is not None and entry.version == version and entry.lease == number:
                del self.pending[generation]

    def give_back(self, number: int) -> None:
        for entry in self.pending.values():
            if entry.lease == number:
                entry.lease = None
        self.leases.pop(number, None)

    def cancel_all(self, reason: str) -> list[str]:
        cancelled = []
        for run in sorted(self.records.values(), key=lambda run: run.created):
            if not run.state.is_finished:
                run.state = TaskState.cancelled(reason)
                run.finished = self.now()
                run.sealed = True
                cancelled.append(run.task_id)
        self.pending.clear()
        return cancelled


class LedgerMatchesReference(RuleBasedStateMachine):
    def __init__(self, make_store: StoreFactory, relay_dir: Path) -> None:
        super().__init__()
        self.clock = FakeClock()
        settings = FollowupSettings(relay_dir=relay_dir, capacity=CAPACITY, delivery_lease_seconds=LEASE_SECONDS)
        self.store = make_store(settings, clock=self.clock)
        self.model = Reference()
        self.numbers = 0

    @rule(task_id=IDS)
    def insert(self, task_id: str) -> None:
        ref = self.store.insert(task_id)
        self.model.insert(task_id, ref)

    @rule(data=st.data(), state=FINAL_STATES)
    def report_from_some_run(self, data: st.DataObject, state: TaskState) -> None:
        if not self.model.runs:
            return
        run = data.draw(st.sampled_from(self.model.runs))
        applied = self.store.notify(run.ref, state)
        assert applied == self.model.finish(run, state)

    @rule(limit=st.none() | st.integers(1, 3))
    def lease(self, limit: int | None) -> None:
        lease = self.store.lease(max_entries=limit)
        if lease is None:
            assert self.model.available() == []
            return
        self.numbers += 1
        taken = self.model.lease(self.numbers, limit)
        assert [(n.id, n.state) for n in lease.notifications] == [(e.run.task_id, e.state) for e in taken]
        self.model.leases[self.numbers] = ModelLease(
            lease.id, [(e.run.ref.generation, e.version) for e in taken]
        )

    @rule(data=st.data(), delivered=st.booleans())
    def settle_a_lease(self, data: st.DataObject, delivered: bool) -> None:
        if not self.model.leases:
            return
        number = data.draw(st.sampled_from(sorted(self.model.leases)))
        self.store.settle(self.model.leases[number].store_id, delivered=delivered)
        if delivered:
            self.model.confirm(number)
        else:
            self.model.give_back(number)

    @rule()
    def expire_every_lease(self) -> None:
        self.clock.advance(LEASE_SECONDS + 1)
        for lease in self.model.leases.values():
            lease.expired = True

    @rule()
    def cancel_all(self) -> None:
        assert self.store.cancel_all("switched") == self.model.cancel_all("switched")

    @invariant()
    def pending_matches(self) -> None:
        expected = [(e.run.task_id, e.state) for e in self.model.available()]
        assert [(n.id, n.state) for n in self.store.pending_notifications()] == expected
        assert self.store.pending_count() == len(expected)

    @invariant()
    def records_match(self) -> None:
        for task_id in [f"t{i}" for i in range(6)]:
            run = self.model.records.get(task_id)
            task = self.store.get(task_id)
            if run is None:
                assert task is None, task_id
            else:
                assert task is not None and task.state == run.state and task.generation == run.ref.generation
        live = sum(1 for run in self.model.records.values() if not run.state.is_finished)
        assert self.store.live_count() == live
        assert len(self.store) == len(self.model.records)


def test_ledger_matches_the_reference_model(make_store: StoreFactory, tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: LedgerMatchesReference(make_store, tmp_path / "relay"),
        settings=settings(
            max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
