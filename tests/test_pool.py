from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from followups import (
    SESSION_CLOSED,
    BackgroundStore,
    CapacityExceeded,
    FollowupSettings,
    SubagentPool,
    TaskStarted,
    TaskState,
    TaskStatus,
)


def make_store(tmp_path: Path, capacity: int = 32, max_concurrent: int = 4, **kwargs: Any) -> BackgroundStore:
    return BackgroundStore(
        FollowupSettings(relay_dir=tmp_path / "relay", capacity=capacity, max_concurrent=max_concurrent), **kwargs
    )


def state_of(store: BackgroundStore, id: str) -> TaskState:
    task = store.get(id)
    assert task is not None, id
    return task.state


class Gate:
    """Subagents that block until released, and record how many ran at once."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.running = 0
        self.peak = 0
        self.started: list[str] = []

    async def subagent(self, name: str) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(name)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return f"{name} done"


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


# -- the cap -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_cap_holds_under_hundreds_of_parallel_spawns(tmp_path: Path, backend: str) -> None:
    spawners, cap = 300, 4
    store = make_store(tmp_path, capacity=cap + spawners, max_concurrent=cap)

    async def main() -> tuple[int, int, int]:
        running = peak = finished = 0

        async def subagent() -> str:
            nonlocal running, peak, finished
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            running -= 1
            finished += 1
            return "ok"

        async with SubagentPool(store, max_concurrent=cap, when_full="queue", close="wait") as pool:
            async with anyio.create_task_group() as tool_calls:
                for _ in range(spawners):
                    tool_calls.start_soon(_spawn_after_checkpoint, pool, subagent)
        return peak, finished, store.running_count()

    peak, finished, still_running = anyio.run(main, backend=backend)
    assert peak == cap
    assert finished == spawners
    assert still_running == 0


async def _spawn_after_checkpoint(pool: SubagentPool, fn: Callable[[], Awaitable[str]]) -> None:
    await anyio.lowlevel.checkpoint()
    pool.spawn(fn)


async def test_parallel_spawns_in_reject_mode_admit_exactly_the_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    admitted: list[str] = []
    refused: list[CapacityExceeded] = []

    async def tool_call(i: int) -> None:
        await trio.lowlevel.checkpoint()
        try:
            admitted.append(pool.spawn(gate.subagent, f"s{i}"))
        except CapacityExceeded as exc:
            refused.append(exc)

    async with SubagentPool(store) as pool:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(tool_call, i)
        await settle()
        assert len(admitted) == 4 and len(refused) == 46
        assert gate.peak == 4 and pool.running_count() == 4
        gate.release.set()
        await settle()
    assert all(state_of(store, id).status is TaskStatus.COMPLETED for id in admitted)


async def test_refusal_tells_the_model_the_cap_the_load_and_what_to_do(tmp_path: Path) -> None:
    gate = Gate()
    async with SubagentPool(make_store(tmp_path), max_concurrent=2) as pool:
        pool.spawn(gate.subagent, "a")
        pool.spawn(gate.subagent, "b")
        with pytest.raises(CapacityExceeded) as excinfo:
            pool.spawn(gate.subagent, "c")
        gate.release.set()
    message = str(excinfo.value)
    assert "2 of 2" in message
    assert "Do not retry in a loop" in message
    assert "<system-reminder>" in message and "inline" in message
    assert excinfo.value.limit == 2 and excinfo.value.in_flight == 2


# -- queueing ----------------------------------------------------------------------------


async def test_queued_tasks_start_in_fifo_order_as_slots_free(tmp_path: Path) -> None:
    events: list[object] = []
    store = make_store(tmp_path, ui_sink=events.append)
    gates = {name: anyio.Event() for name in "abcd"}
    order: list[str] = []

    async def subagent(name: str) -> str:
        order.append(name)
        await gates[name].wait()
        return name

    async with SubagentPool(store, max_concurrent=1, when_full="queue") as pool:
        ids = {name: pool.spawn(subagent, name) for name in "abcd"}
        await settle()
        assert order == ["a"] and pool.queued_count() == 3 and pool.running_count() == 1
        assert [e for e in events if isinstance(e, TaskStarted)] == [TaskStarted(ids["a"])]
        queued = store.get(ids["b"])
        assert queued is not None and queued.queued
        for name in "abcd":
            gates[name].set()
            await settle()
    assert order == ["a", "b", "c", "d"]
    assert [e.id for e in events if isinstance(e, TaskStarted)] == [ids[n] for n in "abcd"]


async def test_queue_is_bounded_and_refuses_past_the_bound(tmp_path: Path) -> None:
    gate = Gate()
    async with SubagentPool(make_store(tmp_path), max_concurrent=1, when_full="queue", max_queued=2) as pool:
        for name in "abc":
            pool.spawn(gate.subagent, name)
        with pytest.raises(CapacityExceeded, match="queue is full"):
            pool.spawn(gate.subagent, "d")
        gate.release.set()


def test_queue_bound_cannot_exceed_the_store_room(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_queued"):
        SubagentPool(make_store(tmp_path, capacity=8, max_concurrent=4), max_queued=5)
    assert SubagentPool(make_store(tmp_path, capacity=8, max_concurrent=4), when_full="queue").max_queued == 4


async def test_cancelling_a_queued_task_reports_it_and_it_never_runs(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    async with SubagentPool(store, max_concurrent=1, when_full="queue") as pool:
        pool.spawn(gate.subagent, "first")
        queued = pool.spawn(gate.subagent, "queued")
        assert pool.cancel(queued) is True
        assert state_of(store, queued) == TaskState.cancelled("cancelled by request")
        assert pool.queued_count() == 0
        await settle()
        gate.release.set()
        await settle()
    assert gate.started == ["first"]
    assert pool.cancel(queued) is False


# -- outcomes ----------------------------------------------------------------------------


async def run_one(tmp_path: Path, fn: Callable[[], Awaitable[Any]], **spawn: Any) -> TaskState:
    store = make_store(tmp_path)
    async with SubagentPool(store, close="wait") as pool:
        id = pool.spawn(fn, **spawn)
    return state_of(store, id)


async def test_returned_string_completes_the_task(tmp_path: Path) -> None:
    async def fn() -> str:
        return "the answer"

    assert await run_one(tmp_path, fn) == TaskState.completed("the answer")


@pytest.mark.parametrize(
    ("value", "text"),
    [({"a": 1}, '{\n  "a": 1\n}'), ([1, "x"], '[\n  1,\n  "x"\n]'), (None, ""), (42, "42"), (b"bytes", "bytes")],
)
async def test_other_return_values_complete_as_text(tmp_path: Path, value: Any, text: str) -> None:
    async def fn() -> Any:
        return value

    assert await run_one(tmp_path, fn) == TaskState.completed(text)


async def test_exception_fails_the_task_with_type_and_message(tmp_path: Path) -> None:
    async def fn() -> str:
        raise ValueError("bad input")

    assert await run_one(tmp_path, fn) == TaskState.failed("ValueError: bad input")


async def test_long_exception_message_is_capped(tmp_path: Path) -> None:
    async def fn() -> str:
        raise RuntimeError("x" * 20_000)

    state = await run_one(tmp_path, fn)
    assert state.status is TaskStatus.FAILED
    assert len(state.text) < 3200 and "truncated" in state.text


async def test_timeout_fails_the_task_saying_so(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async def fn() -> str:
        await trio.sleep(100)
        return "too late"

    assert await run_one(tmp_path, fn, timeout=5) == TaskState.failed("timed out after 5 s")


async def test_a_timeout_error_of_the_subagent_itself_is_not_our_timeout(tmp_path: Path) -> None:
    async def fn() -> str:
        raise TimeoutError("upstream API timed out")

    assert await run_one(tmp_path, fn, timeout=5) == TaskState.failed("TimeoutError: upstream API timed out")


async def test_one_failure_never_cancels_siblings_or_the_pool(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()

    async def crash() -> str:
        raise RuntimeError("boom")

    async with SubagentPool(store) as pool:
        sibling = pool.spawn(gate.subagent, "sibling")
        crashed = pool.spawn(crash)
        await settle()
        assert state_of(store, crashed).status is TaskStatus.FAILED
        gate.release.set()
        await settle()
        later = pool.spawn(gate.subagent, "later")
        await settle()
    assert state_of(store, sibling) == TaskState.completed("sibling done")
    assert state_of(store, later) == TaskState.completed("later done")


class Fatal(BaseException):
    pass


async def test_base_exceptions_propagate_out_of_the_pool(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def fn() -> str:
        raise Fatal()

    with pytest.raises(BaseExceptionGroup) as excinfo:
        async with SubagentPool(store) as pool:
            id = pool.spawn(fn)
            await settle()
    assert excinfo.group_contains(Fatal)
    assert state_of(store, id).status is TaskStatus.FAILED


# -- cancelling and closing --------------------------------------------------------------


async def test_cancelling_a_running_task_reports_cancelled(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    async with SubagentPool(store) as pool:
        id = pool.spawn(gate.subagent, "slow")
        await settle()
        assert pool.cancel(id, reason="no longer needed") is True
        await settle()
        assert state_of(store, id) == TaskState.cancelled("no longer needed")
        assert pool.running_count() == 0 and store.running_count() == 0
    assert pool.cancel("unknown") is False


async def test_leaving_the_block_cancels_running_and_queued_by_default(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    async with SubagentPool(store, max_concurrent=1, when_full="queue") as pool:
        running = pool.spawn(gate.subagent, "running")
        queued = pool.spawn(gate.subagent, "queued")
        await settle()
    assert state_of(store, running) == TaskState.cancelled(SESSION_CLOSED)
    assert state_of(store, queued) == TaskState.cancelled(SESSION_CLOSED)
    assert gate.started == ["running"]
    assert sorted(n.id for n in store.drain_notifications()) == sorted([queued, running])


async def test_close_wait_lets_running_and_queued_finish(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def quick(name: str) -> str:
        await trio.lowlevel.checkpoint()
        return name

    async with SubagentPool(store, max_concurrent=1, when_full="queue", close="wait") as pool:
        ids = [pool.spawn(quick, name) for name in "abc"]
    assert [state_of(store, id) for id in ids] == [TaskState.completed(n) for n in "abc"]


async def test_an_error_in_the_block_cancels_even_with_close_wait(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    with pytest.raises(BaseExceptionGroup) as excinfo:
        async with SubagentPool(store, close="wait") as pool:
            id = pool.spawn(gate.subagent, "x")
            await settle()
            raise KeyError("host loop crashed")
    assert excinfo.group_contains(KeyError)
    assert state_of(store, id).status is TaskStatus.CANCELLED


async def test_cancel_all_cancels_everything_and_applies_the_store_rule(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()

    async def done() -> str:
        return "finished earlier"

    async with SubagentPool(store, max_concurrent=1, when_full="queue") as pool:
        earlier = pool.spawn(done)
        await settle()
        assert store.has_pending_notifications()
        running = pool.spawn(gate.subagent, "r")
        queued = [pool.spawn(gate.subagent, f"q{i}") for i in range(2)]
        await settle()
        cancelled = pool.cancel_all("session switched")
        await settle()
        assert set(cancelled) == {running, *queued}
        assert pool.live_count() == 0 and pool.running_count() == 0
    assert not store.has_pending_notifications()
    assert state_of(store, earlier).status is TaskStatus.COMPLETED
    for id in (running, *queued):
        assert state_of(store, id) == TaskState.cancelled("session switched")
    assert gate.started == ["r"]


# -- counts, ids, waiting, misuse --------------------------------------------------------


async def test_running_count_never_counts_a_finished_task(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def instant() -> str:
        return "no checkpoint at all"

    async with SubagentPool(store, when_full="queue") as pool:
        for _ in range(10):
            pool.spawn(instant)
        await settle()
        assert pool.running_count() == 0
        assert store.running_count() == 0
        assert pool.live_count() == 0


async def test_wait_for_notification_wakes_when_a_subagent_finishes(tmp_path: Path) -> None:
    gate = Gate()
    async with SubagentPool(make_store(tmp_path)) as pool:
        pool.spawn(gate.subagent, "a")
        await settle()
        assert not pool.store.has_pending_notifications()
        gate.release.set()
        with trio.fail_after(5):
            assert await pool.wait_for_notification() is True


async def test_explicit_task_id_must_not_be_live(tmp_path: Path) -> None:
    gate = Gate()
    async with SubagentPool(make_store(tmp_path)) as pool:
        assert pool.spawn(gate.subagent, "a", task_id="mine") == "mine"
        with pytest.raises(ValueError, match="already in use by a live task"):
            pool.spawn(gate.subagent, "b", task_id="mine")
        gate.release.set()
        await settle()
        assert pool.spawn(gate.subagent, "c", task_id="mine") == "mine"


async def test_spawn_outside_the_block_is_an_error(tmp_path: Path) -> None:
    async def fn() -> str:
        return ""

    pool = SubagentPool(make_store(tmp_path))
    with pytest.raises(RuntimeError, match="before entering its 'async with' block"):
        pool.spawn(fn)
    async with pool:
        pass
    with pytest.raises(RuntimeError, match="after its 'async with' block ended"):
        pool.spawn(fn)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_spawns_from_many_threads_at_once_keep_the_cap(tmp_path: Path, backend: str) -> None:
    threads, per_thread, cap = 16, 10, 4
    store = make_store(tmp_path, capacity=256, max_concurrent=cap)
    admitted: list[str] = []
    refused: list[CapacityExceeded] = []
    lock = threading.Lock()

    async def main() -> tuple[int, int]:
        gate = Gate()
        barrier = threading.Barrier(threads)

        def tool_thread() -> None:
            barrier.wait()
            for _ in range(per_thread):
                try:
                    task_id = pool.spawn(gate.subagent, "t")
                except CapacityExceeded as exc:
                    with lock:
                        refused.append(exc)
                else:
                    with lock:
                        admitted.append(task_id)

        async with SubagentPool(store, max_concurrent=cap) as pool:
            async with anyio.create_task_group() as workers:
                for _ in range(threads):
                    workers.start_soon(anyio.to_thread.run_sync, tool_thread)
            await anyio.wait_all_tasks_blocked()
            running = pool.running_count()
            gate.release.set()
            await anyio.wait_all_tasks_blocked()
        return gate.peak, running

    peak, running = anyio.run(main, backend=backend)
    assert peak == cap and running == cap
    assert len(admitted) == cap and len(refused) == threads * per_thread - cap
    assert all(state_of(store, id).status is TaskStatus.COMPLETED for id in admitted)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_queue_mode_admits_every_spawn_from_many_threads_in_turn(tmp_path: Path, backend: str) -> None:
    threads, per_thread, cap = 8, 25, 4
    store = make_store(tmp_path, capacity=threads * per_thread + cap, max_concurrent=cap)

    async def main() -> tuple[int, list[str]]:
        running = peak = 0

        async def subagent() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.lowlevel.checkpoint()
            running -= 1
            return "ok"

        ids: list[str] = []
        lock = threading.Lock()

        def tool_thread() -> None:
            for _ in range(per_thread):
                task_id = pool.spawn(subagent)
                with lock:
                    ids.append(task_id)

        async with SubagentPool(store, max_concurrent=cap, when_full="queue", close="wait") as pool:
            async with anyio.create_task_group() as workers:
                for _ in range(threads):
                    workers.start_soon(anyio.to_thread.run_sync, tool_thread)
        return peak, ids

    peak, ids = anyio.run(main, backend=backend)
    assert peak == cap
    assert len(set(ids)) == threads * per_thread
    assert all(state_of(store, id).status is TaskStatus.COMPLETED for id in ids)


async def test_cancel_from_a_thread_cancels_on_the_loop(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gate = Gate()
    async with SubagentPool(store) as pool:
        task_id = pool.spawn(gate.subagent, "long")
        await settle()
        assert await trio.to_thread.run_sync(pool.cancel, task_id) is True
        assert await trio.to_thread.run_sync(pool.cancel, "unknown") is False
    assert state_of(store, task_id).status is TaskStatus.CANCELLED


async def test_errors_of_a_spawn_from_a_thread_reach_that_thread(tmp_path: Path) -> None:
    async def fn() -> str:
        return ""

    async with SubagentPool(make_store(tmp_path)) as pool:
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            await trio.to_thread.run_sync(lambda: pool.spawn(fn, timeout=-1))


def test_spawn_from_a_thread_after_the_loop_finished_is_refused_clearly(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    pools: list[SubagentPool] = []

    async def main() -> None:
        async with SubagentPool(store) as pool:
            pools.append(pool)

    trio.run(main)

    async def fn() -> str:
        return ""

    errors: list[BaseException] = []

    def late_spawn() -> None:
        try:
            pools[0].spawn(fn)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=late_spawn)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "after its 'async with' block ended" in str(errors[0])


@pytest.mark.parametrize("kwargs", [{"max_concurrent": 0}, {"max_concurrent": 33}, {"when_full": "drop"}, {"close": "never"}])
def test_invalid_pool_options_are_rejected(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SubagentPool(make_store(tmp_path), **kwargs)


async def test_invalid_timeout_is_rejected(tmp_path: Path) -> None:
    async def fn() -> str:
        return ""

    async with SubagentPool(make_store(tmp_path)) as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.spawn(fn, timeout=0)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_outcomes_timeouts_and_cancellation_on_either_backend(tmp_path: Path, backend: str) -> None:
    store = make_store(tmp_path)

    async def main() -> dict[str, str]:
        async def ok() -> str:
            return "ok"

        async def bad() -> str:
            raise OSError("disk on fire")

        async def forever() -> str:
            await anyio.sleep(math.inf)
            return "never"

        async with SubagentPool(store, close="cancel") as pool:
            ids = {
                "ok": pool.spawn(ok),
                "bad": pool.spawn(bad),
                "timeout": pool.spawn(forever, timeout=0.05),
                "cancelled": pool.spawn(forever),
            }
            while store.get(ids["timeout"]).state.status is TaskStatus.RUNNING:  # type: ignore[union-attr]
                await store.wait_for_notification()
                store.drain_notifications()
            pool.cancel(ids["cancelled"])
        return {name: str(state_of(store, id).status) + ": " + state_of(store, id).text for name, id in ids.items()}

    assert anyio.run(main, backend=backend) == {
        "ok": "completed: ok",
        "bad": "failed: OSError: disk on fire",
        "timeout": "failed: timed out after 0.05 s",
        "cancelled": "cancelled: cancelled by request",
    }


async def test_id_factory_names_tasks_and_ids_in_use_are_skipped(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.insert("job-1")
    names = iter(["job-1", "job-1", "job-2", "job-3"])

    async def fn() -> str:
        return "ok"

    async with SubagentPool(store, id_factory=lambda: next(names), close="wait") as pool:
        assert pool.spawn(fn) == "job-2"
        assert pool.spawn(fn) == "job-3"


async def test_a_large_result_is_relayed_off_the_loop_and_survives_closing_the_pool(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    loop_thread = threading.get_ident()
    relay_threads: list[int] = []
    relaying, release = threading.Event(), threading.Event()
    relay = store.relay.relay_if_large

    def slow_relay(label: str, text: str) -> Any:
        relay_threads.append(threading.get_ident())
        relaying.set()
        release.wait(timeout=30)  # bounded, so a relay made on the loop thread fails instead of hanging
        return relay(label, text)

    store.relay.relay_if_large = slow_relay  # type: ignore[method-assign]
    big = "subagent output line\n" * 50_000

    async def subagent() -> str:
        return big

    async def release_once_everything_waits() -> None:
        await trio.testing.wait_all_tasks_blocked()
        release.set()

    async with trio.open_nursery() as nursery:
        async with SubagentPool(store) as pool:
            task_id = pool.spawn(subagent)
            await trio.to_thread.run_sync(relaying.wait)
            nursery.start_soon(release_once_everything_waits)
        # Leaving the pool cancels what runs; a report already under way still lands.
    assert relay_threads and loop_thread not in relay_threads
    state = state_of(store, task_id)
    assert state.status is TaskStatus.COMPLETED
    assert "[Full output: 50000 lines" in state.text
    assert [n.id for n in store.drain_notifications()] == [task_id]


async def test_a_reported_result_is_no_longer_live_and_has_freed_its_slot(tmp_path: Path) -> None:
    # A loop that sees nothing pending and live_count() > 0 sleeps until the next notification:
    # if live_count lagged behind the notification it would sleep forever. And a model told of
    # the result may start another task at once: the slot must already be free.
    store = make_store(tmp_path)

    async def subagent() -> str:
        return "subagent output line\n" * 50_000

    async def quick() -> str:
        return "ok"

    async with SubagentPool(store, max_concurrent=1, close="wait") as pool:
        pool.spawn(subagent)
        with trio.fail_after(10):
            assert await store.wait_for_notification() is True
        assert pool.live_count() == 0
        pool.spawn(quick)


async def test_one_pool_spawns_into_other_sessions_of_its_store_and_cancels_them_on_close(tmp_path: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path))
    alice, bob = store.session("alice"), store.session("bob")
    async with SubagentPool(store) as pool:
        done = pool.spawn(_returns("alice's"), task_id="a", session=alice)
        pool.spawn(_forever, task_id="b", session=bob)
        assert await alice.wait_for_notification(timeout=10)
        with pytest.raises(ValueError, match="own store"):
            pool.spawn(_forever, session=BackgroundStore(FollowupSettings(relay_dir=tmp_path)).session("x"))
    assert done == "a"
    assert [n.state.text for n in alice.drain_notifications()] == ["alice's"]
    assert bob.get("b").state.status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    assert store.get("a") is None and store.pending_count() == 0


def _returns(text: str) -> Any:
    async def subagent() -> str:
        return text

    return subagent


async def _forever() -> str:
    await trio.sleep_forever()
    return "never"


# -- a queue of subagents: each admitted run runs next in the task that freed its slot ----------


async def test_queued_subagents_keep_the_cap_and_each_knows_its_own_task(tmp_path: Path) -> None:
    from followups import current_task

    store = make_store(tmp_path, capacity=64, max_concurrent=3)
    running = peak = 0
    seen: dict[str, str] = {}

    async def subagent(label: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.lowlevel.checkpoint()
        context = current_task()
        assert context is not None
        seen[label] = context.task_id
        running -= 1
        return label

    async with SubagentPool(store, when_full="queue", close="wait") as pool:
        ids = {pool.spawn(subagent, f"job-{i}"): f"job-{i}" for i in range(40)}
    assert peak == 3
    assert {label: id for id, label in ids.items()} == seen
    assert all(state_of(store, id) == TaskState.completed(label) for id, label in ids.items())


async def test_other_tasks_run_between_queued_subagents_that_never_yield(tmp_path: Path) -> None:
    store = make_store(tmp_path, capacity=256, max_concurrent=1)
    finished = 0
    turns_meanwhile = 0

    async def never_yields() -> str:
        nonlocal finished
        finished += 1
        return "ok"

    async def ticker() -> None:
        nonlocal turns_meanwhile
        while finished < 200:
            await trio.lowlevel.checkpoint()
            if finished:
                turns_meanwhile += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with SubagentPool(store, when_full="queue", close="wait") as pool:
            for _ in range(200):
                pool.spawn(never_yields)
    # one subagent after another in the same task, with the loop's other tasks in between
    assert turns_meanwhile >= 100
    assert store.pending_count() == 200


async def test_cancelling_the_pool_while_a_queue_drains_reports_every_subagent(tmp_path: Path) -> None:
    store = make_store(tmp_path, capacity=256, max_concurrent=2)
    started = 0

    async def slowish() -> str:
        nonlocal started
        started += 1
        await trio.sleep(0)
        await trio.sleep(0)
        return "done"

    async with SubagentPool(store, when_full="queue") as pool:  # close="cancel"
        ids = [pool.spawn(slowish) for _ in range(50)]
        while started < 10:
            await trio.sleep(0)
    states = [state_of(store, id).status for id in ids]
    assert all(status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED) for status in states)
    assert TaskStatus.COMPLETED in states and TaskStatus.CANCELLED in states
    assert store.live_count() == 0
