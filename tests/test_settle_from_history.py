"""Settling deliveries from what a framework's history shows (``followups.delivery``)."""

from __future__ import annotations

from pathlib import Path

from followups import BackgroundStore, FollowupSettings, TaskState
from followups.delivery import delivery_metadata, parse_delivery_metadata, settle_from_history, take_followup
from helpers import FakeClock


def finished(store: BackgroundStore, *ids: str) -> None:
    for task_id in ids:
        store.insert(task_id)
        store.notify(task_id, TaskState.completed(f"{task_id} done"))


def test_found_leases_are_confirmed_and_absent_ones_given_back(store: BackgroundStore) -> None:
    finished(store, "a")
    kept = take_followup(store)
    finished(store, "b")
    lost = take_followup(store)
    finished(store, "c")
    running = take_followup(store)
    assert kept and lost and running
    carried = [parse_delivery_metadata(delivery_metadata(d)) for d in (kept, running)]
    confirmed, given_back = settle_from_history(
        store, [c for c in carried if c is not None], give_back_absent=True, in_flight={running.lease_id}
    )
    assert (confirmed, given_back) == (1, 1)
    assert [lease.id for lease in store.leases()] == [running.lease_id]  # left alone
    assert [n.id for n in store.drain_notifications()] == ["b"]


def test_a_found_reminder_whose_lease_expired_is_acknowledged_not_redelivered(relay_dir: Path) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=10), clock=clock)
    finished(store, "a")
    delivery = take_followup(store)
    assert delivery is not None
    clock.advance(11)
    assert store.pending_count() == 1
    assert settle_from_history(store, [(delivery.lease_id, delivery.notification_ids)]) == (1, 0)
    assert store.pending_count() == 0


def test_only_the_metadata_form_is_recognised() -> None:
    for value in (None, "x", {}, {"lease_id": 1, "notification_ids": []}, {"lease_id": "l", "notification_ids": [1]}):
        assert parse_delivery_metadata(value) is None
    assert parse_delivery_metadata({"lease_id": "l", "notification_ids": ["n"]}) == ("l", ("n",))
