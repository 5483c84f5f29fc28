"""Promises the store used to break at its edges, each pinned by the rule it keeps: waiters that
end after cancel_all, results that survive a reused task id, deliveries that never resurrect a
stale snapshot, events and cancels on the right thread, dropped deliveries that come back, one
subagent that cannot take the session down, shutdown, the pending bound, and one size decision."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from helpers import FakeClock, StoreFactory

from followups import (
    AgentLoop,
    FollowupPlugin,
    FollowupSettings,
    OutputRelay,
    PendingLimitReached,
    PoolClosed,
    ScriptedModel,
    SubagentPool,
    TaskFinished,
    TaskState,
    TaskStatus,
    take_followup,
)


def settings_for(tmp_path: Path, **overrides: Any) -> FollowupSettings:
    return FollowupSettings(relay_dir=tmp_path / "relay", **overrides)


# -- 1. waiters end after cancel_all ---------------------------------------------------------


async def test_a_live_count_loop_ends_after_cancel_all(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))
    store.insert("forever")
    ended = trio.Event()

    async def wait_while_live() -> None:
        while store.live_count():
            await store.wait_for_notification()
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_while_live)
        await trio.testing.wait_all_tasks_blocked()
        store.cancel_all()
        with trio.fail_after(5):
            await ended.wait()


async def test_idle_resume_ends_after_the_pool_cancels_everything(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))

    async def forever() -> str:
        await anyio.sleep(math.inf)
        return "never"

    async with SubagentPool(store) as pool:
        pool.spawn(forever)
        loop = AgentLoop(ScriptedModel(["waiting", "done"]), idle_resume=pool)
        FollowupPlugin(store).register(loop)

        async def cancel_once_idle() -> None:
            await trio.testing.wait_all_tasks_blocked()
            pool.cancel_all()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_once_idle)
            with trio.fail_after(5):
                reply = await loop.run("go")
    assert reply.content == "waiting"


# -- 2. a reused task id loses nothing ----------------------------------------------------------


async def test_respawning_an_id_before_delivery_keeps_both_results(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))

    async def answer(text: str) -> str:
        return text

    async with SubagentPool(store, close="wait") as pool:
        pool.spawn(answer, "first", task_id="job")
        with trio.fail_after(5):
            await store.wait_for_notification()
        pool.spawn(answer, "second", task_id="job")
    assert [(n.id, n.state.text) for n in store.drain_notifications()] == [("job", "first"), ("job", "second")]


def test_reinserting_an_evicted_id_keeps_its_undelivered_result(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path, capacity=2, max_concurrent=1))
    store.insert("job")
    store.notify("job", TaskState.completed("first"))
    store.insert("a")
    store.insert("b")  # evicts the finished "job"
    assert store.get("job") is None
    store.insert("job")
    store.notify("job", TaskState.completed("second"))
    assert [n.state.text for n in store.drain_notifications()] == ["first", "second"]


def test_a_delivery_given_back_after_the_id_was_reused_keeps_the_first_run(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path))
    store.insert("job")
    store.notify("job", TaskState.completed("first"))
    delivery = take_followup(store)
    assert delivery is not None
    store.insert("job")
    store.notify("job", TaskState.completed("second"))
    delivery.give_back()
    assert [n.state.text for n in store.drain_notifications()] == ["first", "second"]


def test_a_stale_report_of_a_superseded_run_is_ignored(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))
    old = store.insert("job")
    store.insert("job")
    assert store.notify(old, TaskState.cancelled("the old run stopped")) is False
    assert store.live_count() == 1
    task = store.get("job")
    assert task is not None and task.state.status is TaskStatus.RUNNING
    assert store.drain_notifications() == []


# -- 3. give-back never resurrects a stale snapshot ----------------------------------------------


def test_giving_back_after_a_newer_state_was_delivered_delivers_nothing_old(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path))
    store.insert("x")
    store.notify("x", TaskState.completed("done"))
    first = take_followup(store)
    assert first is not None
    store.notify("x", TaskState.failed("actually it failed"))
    second = take_followup(store)
    assert second is not None and "actually it failed" in second.text
    second.confirm()
    assert first.give_back() == 0
    assert store.drain_notifications() == []


def test_confirming_a_delivery_keeps_a_state_reported_since(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))
    store.insert("x")
    store.notify("x", TaskState.completed("done"))
    delivery = take_followup(store)
    assert delivery is not None
    store.notify("x", TaskState.failed("actually it failed"))
    delivery.confirm()
    assert [n.state for n in store.drain_notifications()] == [TaskState.failed("actually it failed")]


# -- 4. events and cancels on the right thread ---------------------------------------------------


async def test_every_event_reaches_a_trio_channel_when_results_come_from_threads(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    send, receive = trio.open_memory_channel[Any](math.inf)
    tasks = 40
    store = make_store(settings_for(tmp_path, capacity=tasks), ui_sink=send)
    big = "subagent output line\n" * 5_000

    def report(index: int) -> None:
        store.notify(f"t{index}", TaskState.completed(big if index % 2 else f"small {index}"))

    for index in range(tasks):
        store.insert(f"t{index}")
    async with trio.open_nursery() as nursery:
        for index in range(tasks):
            nursery.start_soon(trio.to_thread.run_sync, report, index)
    finished: set[str] = set()
    with trio.fail_after(10):
        while len(finished) < tasks:
            event = await receive.receive()
            if isinstance(event, TaskFinished):
                finished.add(event.id)
    assert finished == {f"t{index}" for index in range(tasks)}


async def test_an_eviction_from_a_thread_cancels_the_pool_run_on_its_loop(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path, capacity=2, max_concurrent=1))
    stopped = trio.Event()

    async def forever() -> str:
        try:
            await anyio.sleep(math.inf)
        finally:
            stopped.set()
        return "never"

    async with SubagentPool(store, max_queued=0) as pool:
        victim = pool.spawn(forever)
        store.insert("other")
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(store.insert, "newcomer")  # full of live tasks: evicts the oldest
        with trio.fail_after(5):
            await stopped.wait()
        assert store.get(victim) is None
        await trio.testing.wait_all_tasks_blocked()
        pool.spawn(forever)  # the victim's slot (the pool's only one) is free again


# -- 5. a dropped delivery comes back -------------------------------------------------------------


def test_a_dropped_delivery_comes_back_when_its_lease_expires(make_store: StoreFactory, tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(settings_for(tmp_path, delivery_lease_seconds=30), clock=clock)
    store.insert("t1")
    store.notify("t1", TaskState.completed("the result"))
    delivery = take_followup(store)
    assert delivery is not None and store.pending_count() == 0
    del delivery
    gc.collect()
    clock.advance(31)
    again = take_followup(store)
    assert again is not None and "the result" in again.text


def test_a_lease_can_be_settled_by_id_from_another_store_of_the_same_ledger(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path))
    other = make_store(settings_for(tmp_path), like=store)
    store.insert("t1")
    store.notify("t1", TaskState.completed("done"))
    delivery = take_followup(store)
    assert delivery is not None
    [lease] = other.leases()
    assert lease.id == delivery.lease_id and lease.task_ids == ("t1",)
    assert other.settle(lease.id, delivered=False) == 1
    assert [n.id for n in other.drain_notifications()] == ["t1"]


# -- 6. one subagent cannot take the session down --------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def test_an_exception_whose_str_raises_is_that_subagents_failure(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))

    async def broken() -> str:
        raise Unprintable()

    async def fine() -> str:
        await trio.sleep(0)
        return "ok"

    async with SubagentPool(store, close="wait") as pool:
        bad, good = pool.spawn(broken), pool.spawn(fine)
    bad_task, good_task = store.get(bad), store.get(good)
    assert bad_task is not None and bad_task.state.status is TaskStatus.FAILED
    assert bad_task.state.text.startswith("Unprintable")
    assert good_task is not None and good_task.state == TaskState.completed("ok")


def test_a_foreign_cancelled_error_under_asyncio_fails_only_that_subagent(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path))

    async def main() -> tuple[str, str]:
        async def awaits_a_cancelled_future() -> str:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            return await future

        async def sibling() -> str:
            await asyncio.sleep(0.01)
            return "still here"

        async with SubagentPool(store, close="wait") as pool:
            return pool.spawn(awaits_a_cancelled_future), pool.spawn(sibling)

    victim, sibling_id = anyio.run(main, backend="asyncio")
    victim_task, sibling_task = store.get(victim), store.get(sibling_id)
    assert victim_task is not None and victim_task.state.status is TaskStatus.FAILED
    assert "CancelledError" in victim_task.state.text
    assert sibling_task is not None and sibling_task.state == TaskState.completed("still here")


# -- 7. shutdown ------------------------------------------------------------------------------------


async def test_a_spawn_during_shutdown_is_refused_and_the_block_exits(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path))
    refusals: list[PoolClosed] = []

    async def spawns_while_closing() -> str:
        try:
            await anyio.sleep(math.inf)
        finally:
            try:
                pool.spawn(spawns_while_closing)
            except PoolClosed as exc:
                refusals.append(exc)
        return "never"

    with trio.fail_after(5):
        async with SubagentPool(store) as pool:
            pool.spawn(spawns_while_closing)
            await trio.testing.wait_all_tasks_blocked()
    assert len(refusals) == 1 and "shutting down" in str(refusals[0])
    assert store.live_count() == 0


# -- 8. bounds -----------------------------------------------------------------------------------------


def test_past_max_pending_new_tasks_are_refused_and_nothing_is_lost(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(settings_for(tmp_path, capacity=4, max_concurrent=1, max_pending=10))
    for index in range(10):
        store.insert(f"t{index}")
        store.notify(f"t{index}", TaskState.completed(str(index)))
    with pytest.raises(PendingLimitReached, match="10 finished results are still waiting"):
        store.insert("one-too-many")
    assert [n.state.text for n in store.drain_notifications()] == [str(index) for index in range(10)]
    store.insert("now-there-is-room")


@pytest.mark.parametrize("chars", [12_000, 20_000])
def test_a_store_built_with_a_relay_decides_size_by_that_relay(
    make_store: StoreFactory, tmp_path: Path, chars: int
) -> None:
    relay = OutputRelay(settings_for(tmp_path, relay_inline_max_bytes=32_768))
    store = make_store(settings_for(tmp_path), relay=relay)
    store.insert("t1")
    text = "x" * chars
    store.notify("t1", TaskState.completed(text))
    task = store.get("t1")
    assert task is not None and task.state.text == text  # both within the relay's 32 KiB limit


async def test_a_result_the_relay_writes_is_written_off_the_loop_whatever_its_size(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(settings_for(tmp_path, relay_max_lines=10, relay_head_lines=3, relay_tail_lines=3))
    loop_thread = threading.get_ident()
    writers: list[int] = []
    relay_if_large = store.relay.relay_if_large

    def recording(label: str, text: str) -> Any:
        writers.append(threading.get_ident())
        return relay_if_large(label, text)

    store.relay.relay_if_large = recording  # type: ignore[method-assign]

    async def short_but_many_lines() -> str:
        return "line\n" * 50  # 250 characters, over the line limit

    async with SubagentPool(store, close="wait") as pool:
        task_id = pool.spawn(short_but_many_lines)
    task = store.get(task_id)
    assert task is not None and task.relay_path is not None
    assert writers and loop_thread not in writers
