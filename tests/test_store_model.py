"""The store against a naive reference model, driven by hypothesis through random histories."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from followups import BackgroundStore, FollowupSettings, TaskNotification, TaskState, TaskStatus

CAPACITY = 4
IDS = st.sampled_from([f"t{i}" for i in range(7)])
FINAL_STATES = st.builds(
    TaskState,
    st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]),
    st.sampled_from(["a", "b", "c"]),
)


@dataclass
class ModelRecord:
    state: TaskState
    queued: bool
    inserted_at: int
    finished_at: int | None = None
    sealed: bool = False
    last_report: TaskState | None = None


@dataclass
class Reference:
    """Lists and linear scans: obviously right, and slow."""

    records: dict[str, ModelRecord] = field(default_factory=dict)
    pending: list[TaskNotification] = field(default_factory=list)
    clock: int = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def insert(self, id: str, queued: bool) -> None:
        if id not in self.records and len(self.records) >= CAPACITY:
            finished = [(r.finished_at, i) for i, r in self.records.items() if r.finished_at is not None]
            if finished:
                victim = min(finished)[1]
            else:
                victim = min((r.inserted_at, i) for i, r in self.records.items())[1]
            del self.records[victim]
        self.records.pop(id, None)
        self.records[id] = ModelRecord(TaskState.running(), queued, self.tick())

    def start(self, id: str) -> None:
        record = self.records.get(id)
        if record is not None and record.finished_at is None:
            record.queued = False

    def notify(self, id: str, state: TaskState) -> None:
        record = self.records.get(id)
        if record is None or record.sealed or record.last_report == state:
            return
        record.last_report = state
        record.state = state
        record.queued = False
        if record.finished_at is None:
            record.finished_at = self.tick()
        for index, queued in enumerate(self.pending):
            if queued.id == id:
                self.pending[index] = TaskNotification(id, state)
                return
        self.pending.append(TaskNotification(id, state))

    def cancel_all(self) -> None:
        for record in sorted(self.records.values(), key=lambda r: r.inserted_at):
            if record.finished_at is None:
                record.state = TaskState.cancelled("cancelled — session switched")
                record.finished_at = self.tick()
                record.queued = False
                record.sealed = True
        self.pending.clear()

    def drain(self) -> list[TaskNotification]:
        drained, self.pending = self.pending, []
        return drained

    def running(self) -> int:
        return sum(1 for r in self.records.values() if r.finished_at is None and not r.queued)


class StoreMatchesReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.store = BackgroundStore(
            FollowupSettings(relay_dir=Path(self.directory.name), capacity=CAPACITY, max_concurrent=1)
        )
        self.model = Reference()

    def teardown(self) -> None:
        self.directory.cleanup()

    @rule(id=IDS, queued=st.booleans())
    def insert(self, id: str, queued: bool) -> None:
        self.store.insert(id, queued=queued)
        self.model.insert(id, queued)

    @rule(id=IDS)
    def start(self, id: str) -> None:
        self.store.notify_started(id)
        self.model.start(id)

    @rule(id=IDS, state=FINAL_STATES)
    def notify(self, id: str, state: TaskState) -> None:
        self.store.notify(id, state)
        self.model.notify(id, state)

    @rule()
    def cancel_all(self) -> None:
        self.store.cancel_all()
        self.model.cancel_all()

    @rule()
    def drain(self) -> None:
        assert self.store.drain_notifications() == self.model.drain()

    @rule()
    def drain_and_fail_delivery(self) -> None:
        """A hook drains, its delivery fails, and it restores: as if nothing had happened."""
        self.store.restore_notifications(self.store.drain_notifications())

    @invariant()
    def records_match(self) -> None:
        assert len(self.store) == len(self.model.records)
        for id, record in self.model.records.items():
            task = self.store.get(id)
            assert task is not None
            assert task.state == record.state
            assert task.queued == record.queued

    @invariant()
    def counts_match(self) -> None:
        assert self.store.running_count() == self.model.running()
        assert self.store.pending_count() == len(self.model.pending)


StoreMatchesReference.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_store_matches_reference = StoreMatchesReference.TestCase
