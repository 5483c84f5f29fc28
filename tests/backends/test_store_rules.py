"""The store's rules beyond the reference design's tests: eviction preference, restore,
cancel_all, handles, counts, and UI sinks that misbehave."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import anyio
import pytest
import trio

from helpers import StoreFactory
from followups import (
    BackgroundStore,
    FollowupSettings,
    TaskFinished,
    TaskNotification,
    TaskStarted,
    TaskState,
    TaskStatus,
)


class Handle:
    """A stand-in for a cancel scope that records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def small_store(make_store: StoreFactory, tmp_path: Path, capacity: int, **kwargs: object) -> BackgroundStore:
    return make_store(
        FollowupSettings(relay_dir=tmp_path / "relay", capacity=capacity, max_concurrent=1), **kwargs
    )


def complete(store: BackgroundStore, id: str, text: str = "done") -> None:
    store.notify(id, TaskState.completed(text))


# -- eviction ----------------------------------------------------------------------------


def test_eviction_prefers_a_finished_record_over_an_older_running_one(make_store: StoreFactory, tmp_path: Path) -> None:
    store = small_store(make_store, tmp_path, capacity=3)
    store.insert("running")
    store.insert("a")
    store.insert("b")
    complete(store, "b")
    store.insert("new")
    assert store.get("running") is not None
    assert store.get("a") is not None
    assert store.get("b") is None


def test_eviction_takes_the_record_that_finished_longest_ago(make_store: StoreFactory, tmp_path: Path) -> None:
    store = small_store(make_store, tmp_path, capacity=3)
    for id in ("a", "b", "c"):
        store.insert(id)
    complete(store, "c")
    complete(store, "a")
    store.insert("new")
    assert store.get("c") is None
    assert store.get("a") is not None


def test_running_task_outlives_many_newer_finished_tasks(store: BackgroundStore) -> None:
    store.insert("slow")
    for i in range(100):
        store.insert(f"quick{i}")
        complete(store, f"quick{i}")
    store.drain_notifications()
    assert len(store) == store.settings.capacity
    complete(store, "slow", "finally")
    assert store.drain_notifications() == [TaskNotification("slow", TaskState.completed("finally"))]


def test_when_all_are_running_the_oldest_is_evicted_and_its_handle_cancelled(make_store: StoreFactory, 
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = small_store(make_store, tmp_path, capacity=2)
    handle = Handle()
    store.insert("oldest")
    store.attach_handle("oldest", handle)
    store.insert("second")
    with caplog.at_level(logging.WARNING, logger="followups"):
        store.insert("third")
    assert store.get("oldest") is None
    assert handle.cancelled
    assert store.running_count() == 2
    assert "oldest" in caplog.text


def test_get_does_not_refresh_a_record_against_eviction(make_store: StoreFactory, tmp_path: Path) -> None:
    store = small_store(make_store, tmp_path, capacity=2)
    store.insert("a")
    store.insert("b")
    complete(store, "a")
    complete(store, "b")
    for _ in range(5):
        assert store.get("a") is not None
    store.insert("c")
    assert store.get("a") is None and store.get("b") is not None


def test_reinsert_restarts_the_task_and_cancels_the_previous_run(store: BackgroundStore) -> None:
    handle = Handle()
    store.insert("t1")
    store.attach_handle("t1", handle)
    store.insert("t1")
    task = store.get("t1")
    assert task is not None and task.state == TaskState.running()
    assert handle.cancelled
    assert store.running_count() == 1
    assert len(store) == 1


def test_reinsert_after_finish_keeps_the_pending_snapshot(store: BackgroundStore) -> None:
    store.insert("t1")
    complete(store, "t1", "first run")
    store.insert("t1")
    assert store.drain_notifications() == [TaskNotification("t1", TaskState.completed("first run"))]


# -- notify ------------------------------------------------------------------------------


def test_second_notify_updates_state_and_keeps_queue_position(store: BackgroundStore) -> None:
    for id in ("t1", "t2"):
        store.insert(id)
        complete(store, id)
    store.notify("t1", TaskState.failed("changed my mind"))
    drained = store.drain_notifications()
    assert [n.id for n in drained] == ["t1", "t2"]
    assert drained[0].state == TaskState.failed("changed my mind")


def test_notify_reports_whether_it_took_effect(store: BackgroundStore) -> None:
    store.insert("t1")
    assert store.notify("t1", TaskState.running()) is False
    assert store.notify("ghost", TaskState.completed("x")) is False
    assert store.notify("t1", TaskState.completed("x")) is True


def test_notify_rejects_a_state_that_is_not_a_task_state(store: BackgroundStore) -> None:
    store.insert("t1")
    with pytest.raises(TypeError, match="TaskState"):
        store.notify("t1", "completed")  # type: ignore[arg-type]


def test_cancel_reason_is_capped_like_an_error(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.cancelled("r" * 10_000))
    text = store.drain_notifications()[0].state.text
    assert text.startswith("r" * store.settings.max_error_chars)
    assert "truncated: dropped 7000 of 10000 characters" in text


@pytest.mark.parametrize("bad_id", ["", "a\nb", "tab\tid", "x" * 257, 42, None])
def test_invalid_task_ids_are_rejected_with_a_clear_error(store: BackgroundStore, bad_id: object) -> None:
    with pytest.raises(ValueError, match="task id must be"):
        store.insert(bad_id)  # type: ignore[arg-type]


# -- restore -----------------------------------------------------------------------------


def test_restore_puts_notifications_back_in_front_in_order(store: BackgroundStore) -> None:
    for id in ("t1", "t2"):
        store.insert(id)
        complete(store, id)
    drained = store.drain_notifications()
    store.insert("t3")
    complete(store, "t3")
    assert store.restore_notifications(drained) == 2
    assert [n.id for n in store.drain_notifications()] == ["t1", "t2", "t3"]


def test_restore_keeps_a_newer_state_at_the_restored_place(store: BackgroundStore) -> None:
    for id in ("t1", "t2"):
        store.insert(id)
        complete(store, id, "old")
    drained = store.drain_notifications()
    store.notify("t2", TaskState.failed("new"))
    store.restore_notifications(drained)
    assert store.drain_notifications() == [
        TaskNotification("t1", TaskState.completed("old")),
        TaskNotification("t2", TaskState.failed("new")),
    ]


def test_restore_after_reinsert_keeps_the_previous_run_result_as_insert_does(store: BackgroundStore) -> None:
    store.insert("t1")
    complete(store, "t1", "first run")
    drained = store.drain_notifications()
    store.insert("t1")
    assert store.restore_notifications(drained) == 1
    assert store.drain_notifications() == [TaskNotification("t1", TaskState.completed("first run"))]


def test_restore_delivers_a_task_evicted_meanwhile(make_store: StoreFactory, tmp_path: Path) -> None:
    store = small_store(make_store, tmp_path, capacity=1)
    store.insert("t1")
    complete(store, "t1")
    drained = store.drain_notifications()
    store.insert("t2")
    assert store.get("t1") is None
    store.restore_notifications(drained)
    assert [n.id for n in store.drain_notifications()] == ["t1"]


def test_restore_after_cancel_all_does_not_leak_into_the_next_session(store: BackgroundStore) -> None:
    store.insert("t1")
    complete(store, "t1")
    drained = store.drain_notifications()
    store.cancel_all()
    assert store.restore_notifications(drained) == 0
    assert not store.has_pending_notifications()


# -- cancel_all --------------------------------------------------------------------------


def test_cancel_all_cancels_live_tasks_and_leaves_finished_ones(store: BackgroundStore) -> None:
    handles = {id: Handle() for id in ("run", "queue")}
    store.insert("run")
    store.insert("queue", queued=True)
    store.insert("done")
    complete(store, "done")
    for id, handle in handles.items():
        store.attach_handle(id, handle)
    assert store.cancel_all() == ["run", "queue"]
    assert all(handle.cancelled for handle in handles.values())
    for id in ("run", "queue"):
        task = store.get(id)
        assert task is not None and task.state == TaskState.cancelled("cancelled — session switched")
    done = store.get("done")
    assert done is not None and done.state.status is TaskStatus.COMPLETED
    assert store.running_count() == 0
    assert store.pending_count() == 0


def test_cancel_all_emits_a_finished_event_for_each_cancelled_task(make_store: StoreFactory, tmp_path: Path) -> None:
    events: list[object] = []
    store = small_store(make_store, tmp_path, capacity=4, ui_sink=events.append)
    store.insert("a")
    store.insert("b")
    store.cancel_all("user switched session")
    assert events == [
        TaskFinished(TaskNotification(id, TaskState.cancelled("user switched session"))) for id in ("a", "b")
    ]


def test_late_result_of_a_cancelled_task_is_ignored(store: BackgroundStore) -> None:
    store.insert("t1")
    store.cancel_all()
    assert store.notify("t1", TaskState.completed("too late")) is False
    assert not store.has_pending_notifications()
    store.insert("t1")
    assert store.notify("t1", TaskState.completed("new run")) is True


# -- handles and counts ------------------------------------------------------------------


def test_attaching_a_second_handle_cancels_the_first(store: BackgroundStore) -> None:
    first, second = Handle(), Handle()
    store.insert("t1")
    store.attach_handle("t1", first)
    store.attach_handle("t1", second)
    assert first.cancelled and not second.cancelled


def test_attach_handle_for_an_unknown_id_does_nothing(store: BackgroundStore) -> None:
    handle = Handle()
    store.attach_handle("ghost", handle)
    store.cancel_all()
    assert not handle.cancelled


def test_task_finishing_before_its_handle_is_attached_is_not_counted_running(store: BackgroundStore) -> None:
    handle = Handle()
    store.insert("fast")
    complete(store, "fast")
    store.attach_handle("fast", handle)
    assert store.running_count() == 0
    store.cancel_all()
    assert not handle.cancelled


def test_attach_handle_requires_a_cancel_method(store: BackgroundStore) -> None:
    store.insert("t1")
    with pytest.raises(TypeError, match="cancel"):
        store.attach_handle("t1", object())  # type: ignore[arg-type]


def test_running_count_counts_started_unfinished_tasks_only(store: BackgroundStore) -> None:
    store.insert("queued", queued=True)
    store.insert("running")
    assert store.running_count() == 1
    queued = store.get("queued")
    assert queued is not None and queued.queued
    assert store.notify_started("queued") is True
    assert store.running_count() == 2
    complete(store, "running")
    store.notify("queued", TaskState.failed("x"))
    assert store.running_count() == 0


def test_notify_started_ignores_unknown_and_finished_tasks(make_store: StoreFactory, tmp_path: Path) -> None:
    events: list[object] = []
    store = small_store(make_store, tmp_path, capacity=4, ui_sink=events.append)
    store.insert("t1")
    complete(store, "t1")
    events.clear()
    assert store.notify_started("t1") is False
    assert store.notify_started("ghost") is False
    assert events == []


# -- UI sinks ----------------------------------------------------------------------------


def test_callable_sink_receives_started_and_finished(make_store: StoreFactory, tmp_path: Path) -> None:
    events: list[object] = []
    store = small_store(make_store, tmp_path, capacity=4, ui_sink=events.append)
    store.insert("t1")
    store.notify_started("t1")
    complete(store, "t1")
    assert events == [TaskStarted("t1"), TaskFinished(TaskNotification("t1", TaskState.completed("done")))]


def test_failing_sink_never_loses_the_notification(make_store: StoreFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def explode(event: object) -> None:
        raise RuntimeError("UI crashed")

    store = small_store(make_store, tmp_path, capacity=4, ui_sink=explode)
    store.insert("t1")
    store.notify_started("t1")
    with caplog.at_level(logging.WARNING, logger="followups"):
        assert store.notify("t1", TaskState.completed("kept")) is True
    assert "UI sink failed" in caplog.text
    assert store.drain_notifications() == [TaskNotification("t1", TaskState.completed("kept"))]


def test_full_memory_stream_sink_never_loses_the_notification(make_store: StoreFactory, tmp_path: Path) -> None:
    send, receive = anyio.create_memory_object_stream[object](0)
    with send, receive:
        store = small_store(make_store, tmp_path, capacity=4, ui_sink=send)
        store.insert("t1")
        complete(store, "t1")
        assert store.pending_count() == 1


async def test_closed_trio_channel_sink_never_loses_the_notification(make_store: StoreFactory, tmp_path: Path) -> None:
    send, receive = trio.open_memory_channel[object](math.inf)
    store = small_store(make_store, tmp_path, capacity=4, ui_sink=send)
    store.insert("t1")
    await send.aclose()
    complete(store, "t1")
    await receive.aclose()
    store.insert("t2")
    complete(store, "t2")
    assert [n.id for n in store.drain_notifications()] == ["t1", "t2"]


def test_sink_may_call_back_into_the_store(make_store: StoreFactory, tmp_path: Path) -> None:
    seen: list[object] = []
    store: BackgroundStore

    def sink(event: object) -> None:
        seen.append((event, store.get("t1"), store.pending_count()))

    store = small_store(make_store, tmp_path, capacity=4, ui_sink=sink)
    store.insert("t1")
    complete(store, "t1")
    assert len(seen) == 1


def test_async_function_is_refused_as_sink(make_store: StoreFactory, tmp_path: Path) -> None:
    async def sink(event: object) -> None: ...

    with pytest.raises(TypeError, match="memory send stream"):
        small_store(make_store, tmp_path, capacity=4, ui_sink=sink)


def test_non_callable_sink_is_refused(make_store: StoreFactory, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ui_sink"):
        small_store(make_store, tmp_path, capacity=4, ui_sink=42)


def test_a_repeated_report_is_never_delivered_twice(store: BackgroundStore) -> None:
    store.insert("t1")
    complete(store, "t1", "same")
    assert len(store.drain_notifications()) == 1
    assert store.notify("t1", TaskState.completed("same")) is False
    assert store.drain_notifications() == []


def test_a_changed_report_after_delivery_is_delivered_as_an_update(store: BackgroundStore) -> None:
    store.insert("t1")
    complete(store, "t1", "first")
    store.drain_notifications()
    assert store.notify("t1", TaskState.failed("actually it failed")) is True
    assert store.drain_notifications() == [TaskNotification("t1", TaskState.failed("actually it failed"))]


def test_a_repeated_large_report_is_not_relayed_again(store: BackgroundStore, relay_dir: Path) -> None:
    big = "line\n" * 1000
    store.insert("t1")
    complete(store, "t1", big)
    complete(store, "t1", big)
    assert len(list(relay_dir.iterdir())) == 1


async def test_a_closed_ui_channel_is_not_reported_as_a_failure(make_store: StoreFactory, 
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    send, receive = trio.open_memory_channel[object](math.inf)
    store = small_store(make_store, tmp_path, capacity=4, ui_sink=send)
    await receive.aclose()
    store.insert("t1")
    with caplog.at_level(logging.DEBUG, logger="followups"):
        complete(store, "t1")
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]
    assert store.pending_count() == 1
