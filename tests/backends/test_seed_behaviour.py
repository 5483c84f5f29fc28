"""The behaviour pinned down by the reference design's tests (the ``BackgroundStore`` of the
dirge coding agent, in Rust), ported one for one.

Names follow the Rust tests (without ``regression_``). Where the Python API deliberately
differs (cancelled tasks get status CANCELLED, relayed outputs go to ``settings.relay_dir``),
the test asserts the Python form of the same guarantee.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from helpers import numbered_lines
from helpers import StoreFactory
from followups import (
    DEFAULT_CANCEL_REASON,
    BackgroundStore,
    FollowupPlugin,
    FollowupSettings,
    TaskFinished,
    TaskNotification,
    TaskStarted,
    TaskState,
    TaskStatus,
    UserMessage,
    followup_from_store,
    prepend_pending_notifications,
)

# 5,000 lines (~140 kB): far over both inline relay limits.
LARGE_OUTPUT_LINES = 5_000


def fill_to_capacity(store: BackgroundStore) -> None:
    """Insert running tasks ``t0`` … ``t{capacity-1}``, oldest first."""
    for i in range(store.settings.capacity):
        store.insert(f"t{i}")


def relayed_file(relay_dir: Path) -> Path:
    """The one file the relay wrote for a single large output."""
    files = [path for path in relay_dir.resolve().iterdir() if path.is_file()]
    assert len(files) == 1, f"expected exactly one relayed file, found {files}"
    return files[0]


def only_message(messages: list[UserMessage]) -> str:
    assert len(messages) == 1, f"expected exactly one message, got {messages}"
    message = messages[0]
    assert isinstance(message, UserMessage)
    assert message.role == "user"
    return message.content


@pytest.fixture
def ui_channel() -> tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]:
    send_channel, receive_channel = trio.open_memory_channel[Any](math.inf)
    return send_channel, receive_channel


@pytest.fixture
def sink_store(make_store: StoreFactory, settings: FollowupSettings, ui_channel) -> BackgroundStore:
    """A store whose UI sink is ``ui_channel``'s send end."""
    return make_store(settings, ui_sink=ui_channel[0])


@pytest.fixture
def ui_events(ui_channel) -> trio.MemoryReceiveChannel[Any]:
    """The receive end of ``sink_store``'s UI sink."""
    return ui_channel[1]


# -- records -------------------------------------------------------------------------------


def test_insert_then_get_returns_running(store: BackgroundStore) -> None:
    store.insert("t1")
    task = store.get("t1")
    assert task is not None
    assert task.id == "t1"
    assert task.state == TaskState.running()
    assert task.state.status is TaskStatus.RUNNING


def test_get_on_missing_returns_none(store: BackgroundStore) -> None:
    assert store.get("nope") is None


def test_get_is_read_only_after_completion(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("done"))
    for _ in range(3):
        task = store.get("t1")
        assert task is not None, "a finished record must survive reads"
        assert task.state == TaskState.completed("done")
    assert len(store) == 1
    assert store.pending_count() == 1, "get must not consume the pending notification"


# -- notify --------------------------------------------------------------------------------


def test_notify_pushes_completed_to_pending_queue(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("done"))
    assert store.pending_count() == 1
    assert store.has_pending_notifications()


def test_notify_relays_large_completed_payload(store: BackgroundStore) -> None:
    store.insert("t1")
    huge = numbered_lines(LARGE_OUTPUT_LINES)
    store.notify("t1", TaskState.completed(huge))

    task = store.get("t1")
    assert task is not None
    assert task.state.status is TaskStatus.COMPLETED
    text = task.state.text
    assert "`read`" in text, f"relayed summary must mention the `read` tool: {text}"
    saved = relayed_file(store.settings.relay_dir)
    assert saved.is_absolute()
    assert str(saved) in text, f"relayed summary must name the saved file {saved}: {text}"
    assert saved.read_text(encoding="utf-8") == huge, "the file must hold the whole output"
    assert len(text) < len(huge)


def test_notify_truncates_failed_error(store: BackgroundStore) -> None:
    cap = store.settings.max_error_chars
    store.insert("t1")
    huge = "e" * (cap * 2)
    store.notify("t1", TaskState.failed(huge))

    task = store.get("t1")
    assert task is not None
    assert task.state.status is TaskStatus.FAILED
    text = task.state.text
    assert text.startswith("e" * cap), "head must be preserved up to the cap"
    assert "truncated" in text, f"must carry a truncation marker: {text}"
    assert len(text) < len(huge), "must be shorter than the original"


def test_small_completed_payload_passes_through_relay_verbatim(store: BackgroundStore) -> None:
    store.insert("t1")
    small = "subagent answer: 42\nplus a couple more lines.\n"
    store.notify("t1", TaskState.completed(small))

    task = store.get("t1")
    assert task is not None
    assert task.state == TaskState.completed(small), "small payload must round-trip unchanged"
    relay_dir = store.settings.relay_dir
    assert not relay_dir.exists() or not any(relay_dir.iterdir()), "nothing may be relayed"


def test_notify_on_missing_id_is_noop(store: BackgroundStore) -> None:
    store.notify("ghost", TaskState.completed("never inserted"))
    assert store.get("ghost") is None
    assert store.pending_count() == 0


def test_notify_with_running_state_is_noop(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.running())
    assert store.pending_count() == 0
    task = store.get("t1")
    assert task is not None
    assert task.state == TaskState.running()


def test_double_notify_enqueues_once(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("first"))
    store.notify("t1", TaskState.completed("second"))
    assert store.pending_count() == 1
    task = store.get("t1")
    assert task is not None
    assert task.state == TaskState.completed("second")


# -- draining ------------------------------------------------------------------------------


def test_drain_returns_pending_then_empties_queue(store: BackgroundStore) -> None:
    store.insert("t1")
    store.insert("t2")
    store.notify("t1", TaskState.completed("a"))
    store.notify("t2", TaskState.failed("b"))

    drained = store.drain_notifications()
    assert drained == [
        TaskNotification("t1", TaskState.completed("a")),
        TaskNotification("t2", TaskState.failed("b")),
    ]
    assert store.drain_notifications() == []
    assert not store.has_pending_notifications()
    assert store.get("t1") is not None, "draining must keep the records"
    assert store.get("t2") is not None


def test_drain_is_empty_when_nothing_pending(store: BackgroundStore) -> None:
    store.insert("t1")
    assert store.drain_notifications() == []


def test_drain_returns_snapshotted_state_after_eviction(store: BackgroundStore) -> None:
    store.insert("victim")
    store.notify("victim", TaskState.completed("the result"))
    for i in range(store.settings.capacity):
        store.insert(f"filler{i}")
    assert store.get("victim") is None, "victim must be evicted"

    assert store.drain_notifications() == [TaskNotification("victim", TaskState.completed("the result"))]


# -- capacity and eviction -----------------------------------------------------------------


def test_lru_evicts_oldest_at_capacity(store: BackgroundStore) -> None:
    capacity = store.settings.capacity
    fill_to_capacity(store)
    assert len(store) == capacity

    store.insert("overflow")
    assert len(store) == capacity
    assert store.get("t0") is None
    assert store.get("overflow") is not None
    assert store.get(f"t{capacity - 1}") is not None


def test_re_insert_existing_id_does_not_evict(store: BackgroundStore) -> None:
    fill_to_capacity(store)
    store.insert("t5")
    assert len(store) == store.settings.capacity
    assert store.get("t0") is not None, "oldest must NOT be evicted"
    task = store.get("t5")
    assert task is not None
    assert task.state == TaskState.running()


def test_notify_on_evicted_id_is_noop(store: BackgroundStore) -> None:
    fill_to_capacity(store)
    store.insert("overflow")
    store.notify("t0", TaskState.completed("late"))
    assert store.pending_count() == 0
    assert store.drain_notifications() == []
    assert store.get("t0") is None, "a late notify must not resurrect an evicted record"


# -- cancel_all ----------------------------------------------------------------------------


async def test_cancel_all_aborts_in_flight_tasks(store: BackgroundStore) -> None:
    store.insert("t1")
    outcome: dict[str, bool] = {}

    async def subagent(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await trio.sleep_forever()
            store.notify("t1", TaskState.completed("should not run"))
        outcome["cancelled"] = scope.cancelled_caught

    with trio.fail_after(10):  # a handle that is never cancelled fails the test, not hangs it
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(subagent)
            store.attach_handle("t1", handle)

            store.insert("t_stale")
            store.notify("t_stale", TaskState.completed("prev session"))
            assert store.pending_count() == 1

            store.cancel_all()
            assert store.pending_count() == 0, "cancel_all must clear pending"
        # the nursery exited: the subagent really stopped

    assert outcome == {"cancelled": True}
    t1 = store.get("t1")
    assert t1 is not None, "t1 retained"
    assert t1.state == TaskState.cancelled(DEFAULT_CANCEL_REASON)
    assert "cancelled" in t1.state.text
    stale = store.get("t_stale")
    assert stale is not None
    assert stale.state == TaskState.completed("prev session"), "finished tasks keep their state"
    assert store.drain_notifications() == []


# -- one store, many references ------------------------------------------------------------
# Rust's `clones_share_state` clones a handle to shared state. Python has no clone: everyone
# holds a reference to the one store, so the port checks that hooks built on it share it.


async def test_clones_share_state(store: BackgroundStore) -> None:
    plugin = FollowupPlugin(store)
    hook = followup_from_store(store)
    store.insert("t1")
    plugin.store.notify("t1", TaskState.completed("via b"))

    content = only_message(await plugin.get_followup_messages())
    assert "[task t1] completed: via b" in content
    assert await hook() == [], "the other hook must see the queue already drained"
    assert store.drain_notifications() == []


# -- prepend_pending_notifications ---------------------------------------------------------


def test_prepend_passthrough_when_store_is_none() -> None:
    assert prepend_pending_notifications("hello", None) == "hello"


def test_prepend_passthrough_when_nothing_pending(store: BackgroundStore) -> None:
    store.insert("t1")
    assert prepend_pending_notifications("hello", store) == "hello"


def test_prepend_formats_system_reminder(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("the result"))
    out = prepend_pending_notifications("user msg", store)
    assert out.startswith("<system-reminder>\n")
    assert "Task t1 (completed):" in out
    assert "the result" in out
    assert "</system-reminder>\n\n" in out
    assert out.endswith("user msg")


def test_prepend_includes_failed_tasks(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.failed("kaboom"))
    out = prepend_pending_notifications("user msg", store)
    assert "Task t1 (failed):" in out
    assert "kaboom" in out


def test_prepend_drains_queue_once(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("once"))
    first = prepend_pending_notifications("msg", store)
    assert "once" in first
    assert prepend_pending_notifications("msg", store) == "msg"


def test_prepend_includes_all_pending_tasks_in_order(store: BackgroundStore) -> None:
    for i in range(3):
        store.insert(f"t{i}")
        store.notify(f"t{i}", TaskState.completed(f"r{i}"))
    out = prepend_pending_notifications("msg", store)
    positions = [out.find(f"Task t{i}") for i in range(3)]
    assert -1 not in positions, out
    assert positions == sorted(positions), out


# -- UI sink -------------------------------------------------------------------------------


async def next_event(events: trio.MemoryReceiveChannel[Any]) -> object:
    """The next UI event; an event that never comes fails the test instead of hanging it."""
    with trio.fail_after(10):
        return await events.receive()


def finished(event: object) -> TaskNotification:
    assert isinstance(event, TaskFinished), f"expected TaskFinished, got {event!r}"
    return event.notification


async def test_ui_sink_receives_completion_event(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.insert("t1")
    sink_store.notify("t1", TaskState.completed("done"))
    notification = finished(await next_event(ui_events))
    assert notification.id == "t1"
    assert notification.state == TaskState.completed("done")


async def test_ui_sink_receives_failure_event(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.insert("t1")
    sink_store.notify("t1", TaskState.failed("boom"))
    notification = finished(await next_event(ui_events))
    assert notification.state == TaskState.failed("boom")


async def test_ui_sink_event_carries_relayed_payload(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.insert("t1")
    huge = numbered_lines(LARGE_OUTPUT_LINES)
    sink_store.notify("t1", TaskState.completed(huge))

    notification = finished(await next_event(ui_events))
    assert notification.state.status is TaskStatus.COMPLETED
    text = notification.state.text
    assert len(text) < len(huge) // 2, (
        f"relayed summary should be much smaller than the original (got {len(text)} of {len(huge)})"
    )
    assert "`read`" in text, "relayed summary must mention the `read` tool"
    saved = relayed_file(sink_store.settings.relay_dir)
    assert str(saved) in text
    assert saved.read_text(encoding="utf-8") == huge


async def test_ui_sink_does_not_receive_running_state(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.insert("t1")
    sink_store.notify("t1", TaskState.running())
    with pytest.raises(trio.WouldBlock):
        ui_events.receive_nowait()


async def test_ui_sink_no_event_for_evicted_id(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.notify("ghost", TaskState.completed("late"))  # never inserted (as in the Rust test)
    fill_to_capacity(sink_store)
    sink_store.insert("overflow")  # evicts t0
    sink_store.notify("t0", TaskState.completed("late"))
    with pytest.raises(trio.WouldBlock):
        ui_events.receive_nowait()


async def test_notify_started_fires_only_on_ui_sink(sink_store: BackgroundStore, ui_events) -> None:
    sink_store.insert("t1")
    sink_store.notify_started("t1")
    assert await next_event(ui_events) == TaskStarted("t1")
    assert sink_store.drain_notifications() == [], "a start is not a notification"


async def test_notify_started_with_no_ui_sink_is_noop(store: BackgroundStore) -> None:
    store.notify_started("t1")
    assert store.pending_count() == 0
    assert store.get("t1") is None


def _trio_channel() -> tuple[Any, Any]:
    return trio.open_memory_channel[Any](math.inf)


def _anyio_stream() -> tuple[Any, Any]:
    return anyio.create_memory_object_stream[Any](math.inf)


@pytest.mark.parametrize("open_channel", [_trio_channel, _anyio_stream], ids=["trio", "anyio"])
async def test_ui_sink_send_after_receiver_dropped_is_silent(make_store: StoreFactory, 
    settings: FollowupSettings, open_channel: Callable[[], tuple[Any, Any]]
) -> None:
    send_stream, receive_stream = open_channel()
    with send_stream:
        store = make_store(settings, ui_sink=send_stream)
        store.insert("t1")
        receive_stream.close()
        store.notify("t1", TaskState.completed("payload"))  # must not raise
        assert store.drain_notifications() == [TaskNotification("t1", TaskState.completed("payload"))]


# -- follow-up hook ------------------------------------------------------------------------


async def test_subagent_completion_injects_followup_message(store: BackgroundStore) -> None:
    store.insert("abc123")
    store.notify("abc123", TaskState.completed("the answer is 42"))
    hook = followup_from_store(store)

    content = only_message(await hook())
    assert content.startswith("<system-reminder>\n")
    assert content.endswith("</system-reminder>")
    assert "[task abc123] completed:" in content
    assert "the answer is 42" in content
    assert await hook() == []


async def test_subagent_failure_injects_followup_with_error_marker(store: BackgroundStore) -> None:
    store.insert("xyz789")
    store.notify("xyz789", TaskState.failed("connection reset by peer"))
    hook = followup_from_store(store)

    content = only_message(await hook())
    assert "[task xyz789] failed:" in content
    assert "connection reset by peer" in content
    assert "completed:" not in content, f"failures must not be tagged 'completed': {content}"


async def test_followup_batches_multiple_completions_in_one_reminder(store: BackgroundStore) -> None:
    for i in range(3):
        store.insert(f"t{i}")
        store.notify(f"t{i}", TaskState.completed(f"result-{i}"))
    hook = followup_from_store(store)

    content = only_message(await hook())  # one reminder, not one per task
    for i in range(3):
        assert f"[task t{i}] completed: result-{i}" in content
    positions = [content.find(f"t{i}") for i in range(3)]
    assert positions == sorted(positions), content


async def test_followup_returns_empty_when_no_completions(store: BackgroundStore) -> None:
    store.insert("running")
    hook = followup_from_store(store)
    assert await hook() == []


async def test_followup_drains_queue_once(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("once"))
    hook = followup_from_store(store)
    assert len(await hook()) == 1
    assert await hook() == [], "second poll must not redeliver"


# -- threads -------------------------------------------------------------------------------


def test_concurrent_inserts_and_notifies(make_store: StoreFactory, relay_dir: Path) -> None:
    threads_count = 256
    store = make_store(FollowupSettings(relay_dir=relay_dir, capacity=threads_count))
    barrier = threading.Barrier(threads_count, timeout=60)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            store.insert(f"t{i}")
            store.notify(f"t{i}", TaskState.completed(f"done-{i}"))
        except BaseException as exc:  # re-raised below: threads cannot fail the test themselves
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    drained = store.drain_notifications()
    assert sorted(drained, key=lambda n: int(n.id[1:])) == [
        TaskNotification(f"t{i}", TaskState.completed(f"done-{i}")) for i in range(threads_count)
    ]
    assert len(store) == threads_count
    assert store.running_count() == 0
