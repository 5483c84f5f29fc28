"""ReminderDelivery: a drained reminder is confirmed once it reached the model, or given back
so the next boundary delivers it; never both, never lost."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from helpers import StoreFactory
from followups import (
    BackgroundStore,
    FollowupSettings,
    ReminderDelivery,
    ReminderRenderer,
    TaskNotification,
    TaskState,
    take_followup,
)


def finish(store: BackgroundStore, *ids: str) -> None:
    for id in ids:
        store.insert(id)
        store.notify(id, TaskState.completed(f"result of {id}"))


def test_nothing_pending_gives_no_delivery(store: BackgroundStore) -> None:
    assert take_followup(store) is None


def test_delivery_carries_the_rendered_reminder_and_its_task_ids(store: BackgroundStore) -> None:
    finish(store, "a", "b")
    delivery = take_followup(store)
    assert delivery is not None
    assert delivery.task_ids == ("a", "b")
    assert delivery.text.startswith("<system-reminder>")
    assert "result of a" in delivery.text and "result of b" in delivery.text
    assert not store.has_pending_notifications()
    assert not delivery.settled


def test_confirmed_delivery_is_not_delivered_again(store: BackgroundStore) -> None:
    finish(store, "a")
    delivery = take_followup(store)
    assert delivery is not None
    delivery.confirm()
    assert delivery.give_back() == 0
    assert take_followup(store) is None


def test_given_back_delivery_is_delivered_at_the_next_boundary(store: BackgroundStore) -> None:
    finish(store, "a")
    first = take_followup(store)
    assert first is not None
    assert first.give_back() == 1
    assert first.give_back() == 0
    second = take_followup(store)
    assert second is not None
    assert second.text == first.text
    assert take_followup(store) is None


def test_given_back_reminder_goes_before_later_results(store: BackgroundStore) -> None:
    finish(store, "early")
    delivery = take_followup(store)
    assert delivery is not None
    finish(store, "late")
    delivery.give_back()
    again = take_followup(store)
    assert again is not None
    assert again.task_ids == ("early", "late")


def test_context_manager_confirms_on_success_and_gives_back_on_error(store: BackgroundStore) -> None:
    finish(store, "ok")
    with take_followup(store) as delivery:  # type: ignore[union-attr]
        pass
    assert delivery.settled
    assert take_followup(store) is None

    finish(store, "fails")
    with pytest.raises(ConnectionError):
        with take_followup(store):  # type: ignore[union-attr]
            raise ConnectionError("model endpoint unreachable")
    again = take_followup(store)
    assert again is not None and again.task_ids == ("fails",)


def test_a_batch_over_budget_leaves_the_rest_queued(make_store: StoreFactory, relay_dir: object) -> None:
    store = make_store(FollowupSettings(relay_dir=relay_dir, reminder_budget_chars=600))
    for index in range(6):
        store.insert(f"t{index}")
        store.notify(f"t{index}", TaskState.completed("x" * 150))
    first = take_followup(store)
    assert first is not None
    assert 0 < len(first.task_ids) < 6
    assert store.pending_count() == 6 - len(first.task_ids)
    first.give_back()
    assert store.pending_count() == 6


def test_give_back_does_not_resurrect_what_cancel_all_cleared(store: BackgroundStore) -> None:
    store.insert("a")
    store.notify("a", TaskState.completed("done"))
    delivery = take_followup(store)
    assert delivery is not None
    store.cancel_all("session closed")
    assert delivery.give_back() == 0
    assert take_followup(store) is None


def race_confirm_against_give_back(delivery: ReminderDelivery) -> int:
    """Confirm and give back from two threads released at once; return what give_back restored."""
    barrier = threading.Barrier(2)
    restored: list[int] = []

    def confirm() -> None:
        barrier.wait()
        delivery.confirm()

    def give_back() -> None:
        barrier.wait()
        restored.append(delivery.give_back())

    threads = [threading.Thread(target=confirm), threading.Thread(target=give_back)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return restored[0]


def test_racing_confirm_and_give_back_settle_exactly_once(store: BackgroundStore) -> None:
    outcomes = set()
    for round in range(200):
        finish(store, f"r{round}")
        delivery = take_followup(store)
        assert isinstance(delivery, ReminderDelivery)
        restored = race_confirm_against_give_back(delivery)
        # Whichever won, the notification is either delivered (confirmed) or queued once.
        assert store.pending_count() == restored
        assert delivery.settled
        outcomes.add(restored)
        store.drain_notifications()
    assert outcomes <= {0, 1}


class CountingRenderer(ReminderRenderer):
    """The default templates, counting follow-up renders."""

    renders = 0

    def render_followup(self, notifications: Sequence[TaskNotification], *, remaining: int = 0) -> str:
        self.renders += 1
        return super().render_followup(notifications, remaining=remaining)


def test_a_backlog_of_short_results_is_delivered_one_render_a_reminder(
    make_store: StoreFactory, relay_dir: object
) -> None:
    # Short results fill the budget by their count: the lease leaves room for the frame and the
    # "still to come" line, so what it takes fits at once, with nothing rendered twice and
    # nothing given back.
    budget = 2_000
    store = make_store(FollowupSettings(relay_dir=relay_dir, reminder_budget_chars=budget, capacity=64))
    ids = [f"task-{index:04d}" for index in range(600)]
    for id in ids:
        store.insert(id)
        store.notify(id, TaskState.completed("ok"))
    renderer = CountingRenderer()
    take_followup(store, renderer).give_back()  # the renderer's overheads are measured once, here
    before = renderer.renders
    delivered: list[str] = []
    reminders = 0
    while (delivery := take_followup(store, renderer)) is not None:
        assert len(delivery.text) <= budget
        assert len(delivery.task_ids) > 40 or delivery.task_ids[-1] == ids[-1]  # the budget is filled
        delivered.extend(delivery.task_ids)
        reminders += 1
        delivery.confirm()
    assert delivered == ids
    assert renderer.renders - before == reminders
