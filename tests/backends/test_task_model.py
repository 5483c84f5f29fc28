"""The task model of the runtimes this design comes from, on every backend: sessions and their
isolation (tirea), listing, gc and timing (tirea), names and trees (awaken), kinds, close
policies, transfer and external tasks (lash), progress, the inbox and questions (awaken), and
the filtered event stream (lash). Each test is named for the rule it pins."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from helpers import FakeClock, StoreFactory

from followups import (
    BackgroundStore,
    FollowupSettings,
    InboxClosed,
    Lagged,
    NameInUse,
    NoInbox,
    SubagentPool,
    TaskAlreadyFinished,
    TaskCancelRequested,
    TaskContext,
    TaskFinished,
    TaskProgress,
    TaskRegistered,
    TaskSpec,
    TaskStarted,
    TaskState,
    TaskStatus,
    TaskTransferred,
    TransferConflict,
    UnknownTask,
    current_task,
    take_followup,
)


@pytest.fixture
def store(make_store: StoreFactory, tmp_path: Path) -> BackgroundStore:
    return make_store(FollowupSettings(relay_dir=tmp_path / "relay", capacity=64))


def status_of(store: Any, task_id: str) -> TaskStatus:
    task = store.get(task_id)
    assert task is not None, task_id
    return task.state.status


async def forever() -> str:
    await anyio.sleep(math.inf)
    return "never"


async def done(text: str = "done") -> str:
    return text


# -- sessions (tirea) -------------------------------------------------------------------------


def test_a_store_without_a_session_named_uses_the_default_session(store: BackgroundStore) -> None:
    store.insert("t1")
    assert store.session("default").get("t1") is not None
    assert store.session("other").get("t1") is None


def test_get_returns_none_for_a_task_of_another_session(store: BackgroundStore) -> None:
    mine, theirs = store.session("thread-1"), store.session("thread-2")
    mine.insert("t1")
    assert mine.get("t1") is not None
    assert theirs.get("t1") is None


def test_cancel_from_another_session_looks_like_an_unknown_task(store: BackgroundStore) -> None:
    mine, theirs = store.session("thread-1"), store.session("thread-2")
    mine.insert("t1")
    outcome = theirs.cancel("t1")
    assert not outcome and outcome.message == theirs.cancel("never-existed").message.replace("never-existed", "t1")
    assert status_of(mine, "t1") is TaskStatus.RUNNING


def test_send_to_a_task_of_another_session_is_an_unknown_task(store: BackgroundStore) -> None:
    store.session("thread-1").insert("t1")
    with pytest.raises(UnknownTask, match="'t1'"):
        store.session("thread-2").send("t1", "hello")


def test_the_same_id_in_two_sessions_names_two_tasks(store: BackgroundStore) -> None:
    first, second = store.session("a"), store.session("b")
    first.insert("job")
    second.insert("job")
    first.notify("job", TaskState.completed("from a"))
    assert [n.state.text for n in first.drain_notifications()] == ["from a"]
    assert second.drain_notifications() == []
    assert status_of(second, "job") is TaskStatus.RUNNING


def test_list_filters_by_session_and_status(store: BackgroundStore) -> None:
    one, two = store.session("thread-1"), store.session("thread-2")
    one.insert("a", kind="shell")
    one.insert("b", kind="other")
    one.notify("b", TaskState.completed("ok"))
    two.insert("c")
    assert [t.id for t in one.list()] == ["a", "b"]
    assert [t.id for t in one.list(status=TaskStatus.RUNNING)] == ["a"]
    assert [t.id for t in one.list(status="completed")] == ["b"]
    assert [t.id for t in one.list(kind="shell")] == ["a"]
    assert {t.id for t in store.list_all()} == {"a", "b", "c"}
    assert sorted(store.sessions()) == ["thread-1", "thread-2"]


def test_list_returns_tasks_sorted_by_creation(store: BackgroundStore) -> None:
    for task_id in ("z", "m", "a"):
        store.insert(task_id)
    assert [t.id for t in store.list()] == ["z", "m", "a"]


def test_has_live_reflects_state(store: BackgroundStore) -> None:
    assert not store.has_live()
    store.insert("t1")
    assert store.has_live()
    store.notify("t1", TaskState.completed("ok"))
    assert not store.has_live()


def test_gc_finished_removes_finished_tasks_once_delivered_and_only_of_its_session(store: BackgroundStore) -> None:
    mine, theirs = store.session("thread-1"), store.session("thread-2")
    for session in (mine, theirs):
        session.insert("done")
        session.notify("done", TaskState.completed("ok"))
        session.insert("running")
    assert mine.gc_finished() == 0, "an undelivered notification keeps its record"
    mine.drain_notifications()
    assert mine.gc_finished() == 1
    assert [t.id for t in mine.list()] == ["running"]
    assert [t.id for t in theirs.list()] == ["done", "running"]


def test_task_records_carry_their_timing(make_store: StoreFactory, tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(FollowupSettings(relay_dir=tmp_path / "relay"), clock=clock)
    store.insert("t1", queued=True)
    created = store.get("t1")
    assert created is not None and created.created_at == clock.now and created.started_at is None
    clock.advance(2)
    store.notify_started("t1")
    clock.advance(3)
    store.notify("t1", TaskState.completed("ok"))
    finished = store.get("t1")
    assert finished is not None
    assert finished.started_at == created.created_at + 2
    assert finished.finished_at == created.created_at + 5
    assert finished.duration == 3


def test_cancelling_a_finished_task_says_it_is_not_running(store: BackgroundStore) -> None:
    store.insert("t1")
    store.notify("t1", TaskState.completed("ok"))
    outcome = store.cancel("t1")
    assert not outcome
    assert outcome.message == "Task 't1' is not running (current status: completed)"


# -- names (awaken) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["parent", "self", "all", "broadcast"])
def test_reserved_names_are_refused(store: BackgroundStore, name: str) -> None:
    with pytest.raises(NameInUse, match="reserved"):
        store.insert("t1", name=name)


def test_a_live_task_name_cannot_be_taken_twice_in_a_session(store: BackgroundStore) -> None:
    store.insert("t1", name="indexer")
    with pytest.raises(NameInUse, match="'indexer' is already used by live task 't1'"):
        store.insert("t2", name="indexer")
    store.session("other").insert("t3", name="indexer")


def test_a_name_is_free_again_once_its_task_finished(store: BackgroundStore) -> None:
    store.insert("t1", name="indexer")
    store.notify("t1", TaskState.completed("ok"))
    store.insert("t2", name="indexer")
    assert store.get("indexer") is not None and store.get("indexer").id == "t2"  # type: ignore[union-attr]


def test_a_name_finds_its_task_wherever_an_id_does(store: BackgroundStore) -> None:
    store.insert("t1", name="indexer")
    assert store.get("indexer").id == "t1"  # type: ignore[union-attr]
    assert store.cancel("indexer").requested == ("t1",)


# -- trees (awaken, tirea) ----------------------------------------------------------------------------


async def test_a_subagent_that_spawns_becomes_the_parent(store: BackgroundStore) -> None:
    children: list[str] = []

    async def parent() -> str:
        children.append(pool.spawn(done, "child result"))
        return "parent result"

    async with SubagentPool(store, close="wait") as pool:
        parent_id = pool.spawn(parent)
    child = store.get(children[0])
    assert child is not None and child.parent == parent_id
    assert [t.id for t in store.children(parent_id)] == children


async def test_an_explicit_parent_overrides_the_ambient_one(store: BackgroundStore) -> None:
    store.insert("elsewhere")
    spawned: list[str] = []

    async def parent() -> str:
        spawned.append(pool.spawn(done, parent="elsewhere"))
        spawned.append(pool.spawn(done, parent=None))
        return "ok"

    async with SubagentPool(store, close="wait") as pool:
        pool.spawn(parent)
    assert [store.get(task_id).parent for task_id in spawned] == ["elsewhere", None]  # type: ignore[union-attr]


async def test_cancel_tree_reaches_grandchildren(store: BackgroundStore) -> None:
    ready = trio.Event()

    async def grandparent() -> str:
        pool.spawn(parent_agent, name="child")
        return await forever()

    async def parent_agent() -> str:
        pool.spawn(forever, name="grandchild")
        ready.set()
        return await forever()

    async with SubagentPool(store, max_concurrent=4) as pool:
        root = pool.spawn(grandparent, name="root")
        with trio.fail_after(5):
            await ready.wait()
        await trio.testing.wait_all_tasks_blocked()
        cancelled = store.cancel_tree("root")
        assert set(cancelled) == {root, store.get("child").id, store.get("grandchild").id}  # type: ignore[union-attr]
        with trio.fail_after(5):
            while store.live_count():
                await store.wait_for_change()
    assert {t.state.status for t in store.list()} == {TaskStatus.CANCELLED}
    assert {t.cancel_requested_by for t in store.list()} == {"user"}


def test_cancel_descendants_leaves_the_parent_running(store: BackgroundStore) -> None:
    store.insert("p")
    store.insert("c1", parent="p")
    store.insert("c2", parent="c1")
    assert sorted(store.cancel_descendants("p")) == ["c1", "c2"]
    assert store.get("p").cancel_requested_by is None  # type: ignore[union-attr]


def test_cancel_tree_of_a_finished_task_says_it_is_not_running(store: BackgroundStore) -> None:
    store.insert("p")
    store.notify("p", TaskState.completed("ok"))
    assert store.cancel_tree("p") == []
    assert store.cancel("p", tree=True).message == "Task 'p' is not running (current status: completed)"


async def test_live_children_are_cancelled_when_their_parent_finishes(store: BackgroundStore) -> None:
    kept: list[str] = []
    cancelled: list[str] = []

    async def parent() -> str:
        cancelled.append(pool.spawn(forever))
        kept.append(pool.spawn(forever, close_policy="keep"))
        await trio.testing.wait_all_tasks_blocked()
        return "parent done"

    async with SubagentPool(store) as pool:
        pool.spawn(parent)
        with trio.fail_after(5):
            while not cancelled or store.get(cancelled[0]).is_live:  # type: ignore[union-attr]
                await store.wait_for_change()
        child = store.get(cancelled[0])
        assert child is not None and child.cancel_requested_by == "parent_finished"
        assert child.state.status is TaskStatus.CANCELLED
        assert status_of(store, kept[0]) is TaskStatus.RUNNING


async def test_cancel_tree_racing_a_childs_spawn_leaves_nothing_running(store: BackgroundStore) -> None:
    for _ in range(20):
        session = store.session(f"race-{_}")

        async def spawner() -> str:
            for _ in range(5):
                await trio.lowlevel.checkpoint()
                try:
                    pool.spawn(forever)
                except Exception:
                    break
            return await forever()

        async with SubagentPool(session, max_concurrent=8) as pool:
            root = pool.spawn(spawner)
            await trio.lowlevel.checkpoint()
            session.cancel_tree(root)
            with trio.fail_after(5):
                while any(t.is_live and t.parent == root for t in session.list()) or session.get(root).is_live:  # type: ignore[union-attr]
                    await session.wait_for_change(timeout=0.5)
                    session.cancel_tree(root)


# -- kinds and close policies (lash) ---------------------------------------------------------------


def test_cancel_kind_cancels_only_that_kind(store: BackgroundStore) -> None:
    store.insert("m", kind="monitor")
    store.insert("s", kind="subagent")
    store.insert("crawler", kind="crawler")
    assert store.cancel_kind("monitor") == ["m"]
    assert store.cancel_kind("crawler") == ["crawler"]
    assert store.get("s").cancel_requested_by is None  # type: ignore[union-attr]


def test_a_bad_kind_is_refused_naming_the_rules(store: BackgroundStore) -> None:
    with pytest.raises(ValueError, match="kind must be one of subagent, shell"):
        store.insert("t1", kind="Not A Kind")


def test_cancel_unreferenced_keeps_the_referenced(store: BackgroundStore) -> None:
    for task_id in ("a", "b", "c"):
        store.insert(task_id)
    assert store.cancel_unreferenced({"b"}) == ["a", "c"]


def test_ending_a_session_applies_each_close_policy(store: BackgroundStore) -> None:
    old = store.session("old")
    old.insert("cancel-me")
    old.insert("keep-me", close_policy="keep")
    old.insert("move-me", close_policy="transfer")
    ended = old.end(successor="new")
    assert ended.cancelled == ("cancel-me",)
    assert ended.kept == ("keep-me",)
    assert ended.transferred == ("move-me",)
    assert old.get("cancel-me").cancel_requested_by == "session_closed"  # type: ignore[union-attr]
    assert store.session("new").get("move-me") is not None
    assert old.get("move-me") is None


def test_ending_a_session_with_transfer_tasks_needs_a_successor(store: BackgroundStore) -> None:
    store.session("old").insert("move-me", close_policy="transfer")
    with pytest.raises(ValueError, match="pass a successor"):
        store.session("old").end()


# -- transfer (lash) --------------------------------------------------------------------------------


def test_transfer_moves_live_tasks_and_every_undelivered_notification(store: BackgroundStore) -> None:
    old, new = store.session("s1"), store.session("s2")
    old.insert("finished-before")
    old.notify("finished-before", TaskState.completed("early"))
    ref = old.insert("monitor:one", kind="monitor")
    assert store.transfer("s1", "s2") == ["monitor:one"]
    assert old.list() == [old.get("finished-before")]
    assert old.drain_notifications() == []
    moved = new.get("monitor:one")
    assert moved is not None and moved.state.status is TaskStatus.RUNNING and moved.session == "s2"
    assert moved.ref == ref, "a transferred run keeps its identity"
    old.notify(ref, TaskState.completed("late"))
    assert [(n.id, n.state.text) for n in new.drain_notifications()] == [
        ("finished-before", "early"),
        ("monitor:one", "late"),
    ]


def test_transfer_refuses_an_id_live_in_the_successor_and_moves_nothing(store: BackgroundStore) -> None:
    store.session("s1").insert("job")
    store.session("s1").insert("other")
    store.session("s2").insert("job")
    with pytest.raises(TransferConflict, match="live task 'job'"):
        store.transfer("s1", "s2")
    assert [t.id for t in store.session("s1").list()] == ["job", "other"]


def test_a_lease_taken_before_a_transfer_settles_after_it(store: BackgroundStore) -> None:
    old = store.session("s1")
    old.insert("t1")
    old.notify("t1", TaskState.completed("done"))
    delivery = take_followup(old)
    assert delivery is not None
    store.transfer("s1", "s2")
    assert delivery.give_back() == 1
    assert [n.id for n in store.session("s2").drain_notifications()] == ["t1"]


def test_transfer_racing_completion_delivers_once_in_the_successor(store: BackgroundStore) -> None:
    import threading

    for round_ in range(30):
        old, new = store.session(f"a{round_}"), store.session(f"b{round_}")
        ref = old.insert("job")
        barrier = threading.Barrier(2)

        def finish(session: Any, run: Any, barrier: threading.Barrier) -> None:
            barrier.wait()
            session.notify(run, TaskState.completed("result"))

        thread = threading.Thread(target=finish, args=(old, ref, barrier))
        thread.start()
        barrier.wait()
        store.transfer(old.id, new.id)
        thread.join()
        assert [n.id for n in new.drain_notifications()] + [n.id for n in old.drain_notifications()] == ["job"]


# -- external tasks (lash) --------------------------------------------------------------------------


def test_cancelling_an_external_task_runs_its_callback_and_marks_it_cancelled(store: BackgroundStore) -> None:
    calls: list[str] = []
    task = store.register_external(TaskSpec(kind="monitor", description="watch logs"), cancel=lambda: calls.append("x"))
    assert status_of(store, task.id) is TaskStatus.RUNNING
    assert store.cancel(task.id)
    assert calls == ["x"]
    assert status_of(store, task.id) is TaskStatus.CANCELLED


def test_an_external_task_reports_progress_and_finishes_with_a_notification(store: BackgroundStore) -> None:
    task = store.register_external(TaskSpec(id="job-7", kind="other", name="remote"))
    assert task.report_progress("50%")
    assert store.get("remote").progress == "50%"  # type: ignore[union-attr]
    assert task.finish(TaskState.completed("remote result"))
    assert not task.finish(TaskState.failed("twice")) or status_of(store, "job-7") is TaskStatus.FAILED
    assert [n.id for n in store.drain_notifications()] == ["job-7"]


def test_cancel_all_cancels_each_live_external_task(store: BackgroundStore) -> None:
    calls: list[str] = []
    for name in ("a", "b"):
        store.register_external(TaskSpec(id=name), cancel=lambda name=name: calls.append(name))  # type: ignore[misc]
    assert sorted(store.cancel_all()) == ["a", "b"]
    assert sorted(calls) == ["a", "b"]


def test_an_external_task_has_no_inbox(store: BackgroundStore) -> None:
    task = store.register_external(TaskSpec())
    with pytest.raises(NoInbox):
        store.send(task.id, "hello")


# -- progress ------------------------------------------------------------------------------------------


async def test_progress_shows_in_the_record_and_the_stream_and_never_notifies(store: BackgroundStore) -> None:
    release = trio.Event()

    async def worker(ctx: TaskContext) -> str:
        ctx.report_progress("read 10 files")
        assert current_task() is ctx
        await release.wait()
        return "ok"

    async with store.subscribe(kinds={"subagent"}) as events, SubagentPool(store) as pool:
        task_id = pool.spawn(worker)
        with trio.fail_after(5):
            async for event in events:
                if isinstance(event, TaskProgress):
                    break
        assert event.message == "read 10 files" and event.id == task_id
        task = store.get(task_id)
        assert task is not None and task.progress == "read 10 files" and task.progress_at is not None
        assert store.pending_count() == 0
        release.set()


def test_a_task_silent_for_stall_after_seconds_shows_as_stalled(make_store: StoreFactory, tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(FollowupSettings(relay_dir=tmp_path / "relay", stall_after_seconds=60), clock=clock)
    store.insert("t1")
    store.notify_started("t1")
    clock.advance(30)
    store.report_progress("t1", "still going")
    clock.advance(59)
    assert not store.get("t1").stalled  # type: ignore[union-attr]
    clock.advance(2)
    assert store.get("t1").stalled  # type: ignore[union-attr]
    assert [t.stalled for t in store.list()] == [True]


# -- the inbox and questions (awaken) ---------------------------------------------------------------------


async def test_a_message_reaches_a_running_subagents_inbox(store: BackgroundStore) -> None:
    async def worker(ctx: TaskContext) -> str:
        return f"got: {await ctx.inbox.receive()}"

    async with SubagentPool(store, close="wait") as pool:
        task_id = pool.spawn(worker, name="steerable")
        await trio.testing.wait_all_tasks_blocked()
        store.send("steerable", "use the staging database")
    assert store.get(task_id).state == TaskState.completed("got: use the staging database")  # type: ignore[union-attr]


async def test_inbox_errors_are_distinct(store: BackgroundStore) -> None:
    async def closes(ctx: TaskContext) -> str:
        ctx.inbox.close()
        return await forever()

    async with SubagentPool(store) as pool:
        closing = pool.spawn(closes)
        finished = pool.spawn(done)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(InboxClosed):
            store.send(closing, "hi")
        with pytest.raises(TaskAlreadyFinished, match=r"current status: completed"):
            store.send(finished, "hi")
        with pytest.raises(UnknownTask):
            store.send("ghost", "hi")


async def test_ask_parent_puts_the_question_in_the_next_reminder_and_returns_the_answer(store: BackgroundStore) -> None:
    async def asker(ctx: TaskContext) -> str:
        answer = await ctx.ask_parent("Which branch should I use?")
        return f"used {answer}"

    async with SubagentPool(store, close="wait") as pool:
        task_id = pool.spawn(asker)
        with trio.fail_after(5):
            assert await store.wait_for_notification()
        delivery = take_followup(store)
        assert delivery is not None
        assert f"[task {task_id}] asks: Which branch should I use?" in delivery.text
        assert "send_message" in delivery.text
        delivery.confirm()
        assert store.live_count() == 1, "the asking task stays live while it waits"
        store.send(task_id, "main")
    assert store.get(task_id).state == TaskState.completed("used main")  # type: ignore[union-attr]


# -- the event stream (lash) -----------------------------------------------------------------------------


async def test_subscribe_sees_the_whole_lifecycle_in_order(store: BackgroundStore) -> None:
    seen: list[type] = []
    async with store.subscribe() as events:
        store.insert("t1", kind="shell", queued=True)
        store.notify_started("t1")
        store.report_progress("t1", "1 line")
        store.cancel("t1")
        store.notify("t1", TaskState.cancelled("stopped"))
        store.transfer("default", "next")
        with trio.fail_after(5):
            async for event in events:
                seen.append(type(event))
                if isinstance(event, TaskFinished):
                    break
    assert seen == [TaskRegistered, TaskStarted, TaskProgress, TaskCancelRequested, TaskFinished]


async def test_subscribe_filters_by_session_kind_and_finished(store: BackgroundStore) -> None:
    async with store.subscribe(session="mine", kinds={"shell"}, include_finished=False) as events:
        store.session("other").insert("a", kind="shell")
        store.session("mine").insert("b", kind="subagent")
        store.session("mine").insert("c", kind="shell")
        store.session("mine").notify("c", TaskState.completed("ok"))
        store.session("mine").insert("d", kind="shell")
        with trio.fail_after(5):
            first = await events.__anext__()
            second = await events.__anext__()
    assert [(type(e), e.id) for e in (first, second)] == [(TaskRegistered, "c"), (TaskRegistered, "d")]


async def test_a_transfer_is_an_event_of_the_successor(store: BackgroundStore) -> None:
    store.session("s1").insert("job")
    async with store.subscribe(session="s2") as events:
        store.transfer("s1", "s2")
        with trio.fail_after(5):
            event = await events.__anext__()
    assert event == TaskTransferred("job", "s1", "s2", "subagent")


async def test_a_slow_subscriber_sees_lagged_and_the_notifications_are_all_kept(store: BackgroundStore) -> None:
    async with store.subscribe(buffer=3) as events:
        for index in range(10):
            store.insert(f"t{index}")
            store.notify(f"t{index}", TaskState.completed("ok"))
        received = [events.receive_nowait() for _ in range(4)]
    assert [type(e) for e in received[:3]] == [TaskRegistered, TaskFinished, TaskRegistered]
    assert received[3] == Lagged(17)
    assert len(store.drain_notifications()) == 10


async def test_many_sessions_from_threads_and_tasks_never_cross(store: BackgroundStore) -> None:
    sessions = [store.session(f"conv-{i}") for i in range(8)]

    def produce(index: int) -> None:
        session = sessions[index]
        for n in range(25):
            session.insert(f"t{n}")
            session.notify(f"t{n}", TaskState.completed(session.id))

    async with trio.open_nursery() as nursery:
        for index in range(len(sessions)):
            nursery.start_soon(trio.to_thread.run_sync, produce, index)
    for session in sessions:
        delivered = session.drain_notifications()
        assert len(delivered) == 25 and {n.state.text for n in delivered} == {session.id}


def test_the_task_model_works_the_same_under_asyncio(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(FollowupSettings(relay_dir=tmp_path / "relay", capacity=64))

    async def main() -> dict[str, str]:
        async def asker(ctx: TaskContext) -> str:
            ctx.report_progress("thinking")
            return f"answer was {await ctx.ask_parent('which one?')}"

        async def parent() -> str:
            pool.spawn(forever, name="child")
            return await forever()

        async with SubagentPool(store, max_concurrent=4) as pool:
            pool.spawn(asker, name="asker")
            root = pool.spawn(parent, name="root")
            with anyio.fail_after(5):
                assert await store.wait_for_notification()
            delivery = take_followup(store)
            assert delivery is not None and "asks: which one?" in delivery.text
            delivery.confirm()
            store.send("asker", "the second")
            while store.get("child") is None:
                await store.wait_for_change(timeout=1)
            assert sorted(store.cancel_tree("root")) == sorted([root, store.get("child").id])  # type: ignore[union-attr]
            with anyio.fail_after(5):
                while store.live_count():
                    await store.wait_for_change()
        return {task.name or task.id: task.state.text for task in store.list()}

    outcomes = anyio.run(main, backend="asyncio")
    assert outcomes == {"asker": "answer was the second", "root": "cancelled by request", "child": "cancelled by request"}
