"""``BlockingPool``: a SubagentPool on its own loop thread, used from synchronous code."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from followups import BackgroundStore, BlockingPool, CapacityExceeded, PoolClosed, TaskState, TaskStatus
from followups.blocking import wait_for_notification_blocking


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_code_spawns_and_waits_for_a_result(store: BackgroundStore, backend: str) -> None:
    async def subagent(text: str) -> str:
        await anyio.sleep(0)
        return text.upper()

    with BlockingPool(store, backend=backend) as pool:  # type: ignore[arg-type]
        task_id = pool.spawn(subagent, "done")
        while pool.live_count():
            assert pool.wait_for_notification(timeout=10)
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.COMPLETED
    assert [n.state.text for n in store.drain_notifications()] == ["DONE"]


def test_subagents_run_on_the_pool_thread_not_the_caller(store: BackgroundStore) -> None:
    seen: list[int] = []

    async def subagent() -> str:
        seen.append(threading.get_ident())
        return "ok"

    with BlockingPool(store) as pool:
        pool.spawn(subagent)
        assert pool.wait_for_notification(timeout=10)
    assert seen and seen[0] != threading.get_ident()


def test_spawns_from_many_threads_hold_the_cap(store: BackgroundStore) -> None:
    release = threading.Event()

    async def subagent() -> str:
        await anyio.to_thread.run_sync(release.wait)
        return "ok"

    def try_spawn(_: int) -> bool:
        try:
            pool.spawn(subagent)
        except CapacityExceeded:
            return False
        return True

    with BlockingPool(store, max_concurrent=3) as pool:
        with ThreadPoolExecutor(8) as executor:
            admitted = sum(executor.map(try_spawn, range(40)))
        assert admitted == 3
        assert pool.running_count() == 3
        release.set()
        while pool.live_count():
            pool.wait_for_change(timeout=10)
    assert len(store.drain_notifications()) == 3


def test_closing_cancels_what_is_left_and_stops_the_thread(store: BackgroundStore) -> None:
    async def forever() -> str:
        await anyio.sleep_forever()
        return "never"

    before = threading.active_count()
    pool = BlockingPool(store)
    with pool:
        task_id = pool.spawn(forever)
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.CANCELLED
    assert threading.active_count() == before
    pool.close()  # idempotent
    with pytest.raises(PoolClosed):
        pool.spawn(forever)
    with pytest.raises(RuntimeError, match="only once"):
        pool.start()


def test_close_wait_waits_for_the_subagents(store: BackgroundStore) -> None:
    async def quick() -> str:
        await anyio.sleep(0)
        return "finished"

    with BlockingPool(store, close="wait") as pool:
        task_id = pool.spawn(quick)
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.COMPLETED


def test_call_runs_a_coroutine_on_the_loop_and_refuses_the_loop_thread(store: BackgroundStore) -> None:
    async def where() -> int:
        return threading.get_ident()

    with BlockingPool(store) as pool:
        loop_thread = pool.call(where)
        assert loop_thread != threading.get_ident()

        async def nested() -> str:
            try:
                pool.wait_for_change(timeout=0.01)
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        assert "event loop thread" in pool.call(nested)
    with pytest.raises(RuntimeError, match="open pool"):
        pool.call(where)


def test_options_are_validated_before_any_thread_starts(store: BackgroundStore) -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        BlockingPool(store, max_concurrent=0)
    with pytest.raises(ValueError, match="backend"):
        BlockingPool(store, backend="curio")  # type: ignore[arg-type]


def test_blocking_wait_returns_when_a_result_arrives_from_another_thread(store: BackgroundStore) -> None:
    store.insert("t1")
    timer = threading.Timer(0.01, lambda: store.notify("t1", TaskState.completed("r")))
    timer.start()
    try:
        assert wait_for_notification_blocking(store, timeout=10)
    finally:
        timer.join()
    assert store.pending_count() == 1


async def test_blocking_wait_refuses_a_thread_running_a_loop(store: BackgroundStore) -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        wait_for_notification_blocking(store, timeout=0)
