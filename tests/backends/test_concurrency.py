"""Concurrency: many threads and many tasks on one store, exactly-once delivery, waiting."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio
import trio.testing

from helpers import StoreFactory
from followups import BackgroundStore, FollowupSettings, TaskState


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make CPython switch threads every microsecond instead of every 5 ms, so that threads
    really interleave inside the store's methods and a missing lock shows."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def drain_ids(store: BackgroundStore) -> list[str]:
    return [n.id for n in store.drain_notifications()]


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_hammering_one_store_deliver_each_result_exactly_once(store: BackgroundStore) -> None:
    workers, per_worker = 16, 400
    barrier = threading.Barrier(workers + 1)
    delivered: Counter[str] = Counter()
    done = threading.Event()

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(per_worker):
            id = f"w{worker}-{i}"
            store.insert(id)
            store.notify_started(id)
            outcome = TaskState.completed(f"r{i}") if i % 3 else TaskState.failed(f"e{i}")
            assert store.notify(id, outcome)
            store.notify(id, outcome)  # a duplicate notify must not duplicate delivery

    def consume() -> None:
        barrier.wait()
        while not done.is_set():
            delivered.update(drain_ids(store))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    consumer = threading.Thread(target=consume)
    for thread in [*threads, consumer]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    consumer.join()
    delivered.update(drain_ids(store))
    expected = {f"w{w}-{i}" for w in range(workers) for i in range(per_worker)}
    assert set(delivered) == expected
    assert max(delivered.values()) == 1
    assert store.running_count() == 0
    assert len(store) == store.settings.capacity


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_restoring_and_draining_lose_and_duplicate_nothing(store: BackgroundStore) -> None:
    total = 3000
    barrier = threading.Barrier(4)
    delivered: Counter[str] = Counter()
    lock = threading.Lock()
    produced = threading.Event()

    def produce() -> None:
        barrier.wait()
        for i in range(total):
            store.insert(f"t{i}")
            store.notify(f"t{i}", TaskState.completed("x"))
        produced.set()

    def flaky_consumer(fail_every: int) -> None:
        barrier.wait()
        rounds = 0
        while not (produced.is_set() and not store.has_pending_notifications()):
            batch = store.drain_notifications()
            rounds += 1
            if batch and rounds % fail_every == 0:
                store.restore_notifications(batch)  # a delivery that failed
                continue
            with lock:
                delivered.update(n.id for n in batch)

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=flaky_consumer, args=(k,)) for k in (2, 3, 5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    delivered.update(drain_ids(store))
    assert set(delivered) == {f"t{i}" for i in range(total)}
    assert max(delivered.values()) == 1


async def test_trio_tasks_hammering_one_store_deliver_exactly_once(make_store: StoreFactory, tmp_path: Path) -> None:
    tasks = 300
    store = make_store(FollowupSettings(relay_dir=tmp_path, capacity=tasks))
    delivered: Counter[str] = Counter()

    async def subagent(i: int) -> None:
        store.insert(f"t{i}")
        store.notify_started(f"t{i}")
        await trio.lowlevel.checkpoint()
        store.notify(f"t{i}", TaskState.completed(f"r{i}"))

    async def consumer() -> None:
        while sum(delivered.values()) < tasks:
            await store.wait_for_notification()
            delivered.update(drain_ids(store))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            for i in range(tasks):
                nursery.start_soon(subagent, i)
    assert delivered == Counter({f"t{i}": 1 for i in range(tasks)})


# -- waiting -----------------------------------------------------------------------------


async def test_wait_returns_at_once_when_something_is_pending(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("x"))
    with trio.fail_after(1):
        assert await store.wait_for_notification() is True
    assert store.pending_count() == 1  # waiting never drains


async def test_wait_is_woken_by_a_notify_from_another_task(store: BackgroundStore) -> None:
    store.insert("t1")
    async with trio.open_nursery() as nursery:
        woke = trio.Event()

        async def waiter() -> None:
            assert await store.wait_for_notification() is True
            woke.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        store.notify("t1", TaskState.completed("x"))
        await woke.wait()


async def test_wait_is_woken_by_a_notify_from_a_worker_thread(store: BackgroundStore) -> None:
    store.insert("t1")
    started = threading.Event()

    def finish_in_thread() -> None:
        started.wait()
        store.notify("t1", TaskState.completed("from a thread"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, finish_in_thread)
        started.set()
        with trio.fail_after(10):
            assert await store.wait_for_notification() is True


async def test_wait_times_out_with_false(store: BackgroundStore, autojump_clock: trio.abc.Clock) -> None:
    store.insert("slow")
    assert await store.wait_for_notification(timeout=5) is False
    assert trio.current_time() >= 5


async def test_wait_returns_false_at_once_when_nothing_can_come(
    store: BackgroundStore, autojump_clock: trio.abc.Clock
) -> None:
    assert await store.wait_for_notification(timeout=5) is False
    assert trio.current_time() == 0


async def test_wait_keeps_waiting_if_another_consumer_drained_first(
    store: BackgroundStore, autojump_clock: trio.abc.Clock
) -> None:
    store.insert("t1")
    store.insert("t2")
    async with trio.open_nursery() as nursery:
        results: list[bool] = []

        async def waiter() -> None:
            results.append(await store.wait_for_notification(timeout=100))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        store.notify("t1", TaskState.completed("x"))
        store.drain_notifications()  # someone else takes it before the waiter looks
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        store.notify("t2", TaskState.completed("y"))
    assert results == [True]


async def test_cancelled_wait_loses_nothing(store: BackgroundStore) -> None:
    store.insert("t1")
    with trio.move_on_after(0.01):
        await store.wait_for_notification()
    store.notify("t1", TaskState.completed("x"))
    assert drain_ids(store) == ["t1"]


def test_wait_works_under_asyncio_woken_from_a_thread(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(FollowupSettings(relay_dir=tmp_path))
    store.insert("t1")

    async def main() -> bool:
        loop_thread_waiting = asyncio.Event()

        def notify_later() -> None:
            store.notify("t1", TaskState.completed("x"))

        async def waiter() -> bool:
            loop_thread_waiting.set()
            return await store.wait_for_notification(timeout=10)

        task = asyncio.ensure_future(waiter())
        await loop_thread_waiting.wait()
        await asyncio.to_thread(notify_later)
        return await task

    assert asyncio.run(main()) is True


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_many_waiters_are_all_woken_on_either_backend(make_store: StoreFactory, tmp_path: Path, backend: str) -> None:
    store = make_store(FollowupSettings(relay_dir=tmp_path))
    store.insert("t1")

    async def main() -> list[bool]:
        results: list[bool] = []

        async def waiter() -> None:
            results.append(await store.wait_for_notification(timeout=10))

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(store.notify, "t1", TaskState.completed("x"))
        return results

    assert anyio.run(main, backend=backend) == [True] * 50
