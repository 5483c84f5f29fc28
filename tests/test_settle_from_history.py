"""Settling deliveries from what a framework's history shows (``followups.delivery``)."""

from __future__ import annotations

from pathlib import Path

from followups import BackgroundStore, FollowupSettings, TaskState
import pytest

from followups.delivery import (
    delivery_metadata,
    label_delivery,
    parse_delivery_metadata,
    reminder_digest,
    settle_from_history,
    settle_from_texts,
    take_followup,
)
from followups.ledger.labels import InProcessReminderLabels, ReminderLabel, labels_for
from followups.ledger.memory import MemoryBackend
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


# -- recognising a reminder by its text ------------------------------------------------------


def test_a_labelled_reminder_found_by_its_text_is_confirmed_even_after_its_lease_expired(relay_dir: Path) -> None:
    clock = FakeClock()
    store = BackgroundStore(FollowupSettings(relay_dir=relay_dir, delivery_lease_seconds=10), clock=clock)
    finished(store, "a")
    delivery = take_followup(store)
    assert delivery is not None
    label_delivery(delivery, ["hello"])
    clock.advance(11)
    assert store.pending_count() == 1
    assert settle_from_texts(store, ["hello", "unrelated"]) == 0  # not carried: left to its lease
    assert store.pending_count() == 1
    assert settle_from_texts(store, ["hello", delivery.text]) >= 1
    assert store.pending_count() == 0
    assert not store.reminder_labels.has_any(store.id)


def test_a_copy_the_history_held_before_does_not_count_as_the_reminder(store: BackgroundStore) -> None:
    finished(store, "a")
    delivery = take_followup(store)
    assert delivery is not None
    label_delivery(delivery, [delivery.text])  # an equal reminder was already there
    assert settle_from_texts(store, [delivery.text]) == 0
    assert [lease.id for lease in store.leases()] == [delivery.lease_id]
    assert settle_from_texts(store, [delivery.text, delivery.text], in_flight={delivery.lease_id}) == 0
    assert settle_from_texts(store, [delivery.text, delivery.text]) == 1
    assert store.leases() == []


def test_settling_a_labelled_delivery_forgets_its_label_and_sessions_stay_apart(store: BackgroundStore) -> None:
    other = store.session("other")
    finished(store, "a")
    delivery = take_followup(store)
    assert delivery is not None
    label_delivery(delivery)
    assert store.reminder_labels.has_any(store.id) and not other.reminder_labels.has_any(other.id)
    assert settle_from_texts(other, [delivery.text]) == 0
    delivery.give_back()
    assert not store.reminder_labels.has_any(store.id)
    assert settle_from_texts(store, [delivery.text]) == 0 and store.pending_count() == 1


def test_in_process_labels_are_bounded_and_refuse_a_bad_bound() -> None:
    labels = InProcessReminderLabels(max_labels=2)
    for n in range(3):
        labels.add(ReminderLabel(f"l{n}", "s", (f"n{n}",), reminder_digest(str(n))))
    assert len(labels) == 2
    assert [label.lease_id for label in labels.find("s", {reminder_digest(str(n)) for n in range(3)})] == ["l1", "l2"]
    labels.discard("l1")
    labels.discard("l2")
    assert not labels.has_any("s")
    with pytest.raises(ValueError, match="max_labels"):
        InProcessReminderLabels(max_labels=0)


def test_a_backend_that_keeps_labels_is_used_and_stores_on_one_backend_share_them(relay_dir: Path) -> None:
    class KeepsLabels(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.reminder_labels = InProcessReminderLabels()

    backend = KeepsLabels()
    assert labels_for(backend) is backend.reminder_labels
    plain = MemoryBackend()
    assert labels_for(plain) is labels_for(plain) and labels_for(plain) is not labels_for(MemoryBackend())
