"""A SQLite store that cannot commit (database locked past its timeout, disk full): a
subagent's report never raises, the result is kept in memory with ``persistence_error``
visible, it is retried on the next access and on a timer, and nothing is lost."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from followups import BackgroundStore, FollowupSettings, StoreUnavailable, SubagentPool, TaskState
from followups.tools import task_tools

TIMEOUT = 30.0


def settings_for(tmp_path: Path, **overrides: Any) -> FollowupSettings:
    return FollowupSettings(relay_dir=tmp_path / "relay", sqlite_busy_timeout_seconds=0.05, **overrides)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holds the database's write lock."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield blocker
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()


def committed_status(path: Path, task_id: str) -> str | None:
    """The task's status as the file holds it, read without going through the store."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT status FROM runs WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else str(row[0])


def wait_for_commit(path: Path, task_id: str, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while committed_status(path, task_id) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} was never committed as {status}")
        time.sleep(0.01)


async def unused_subagent(request: Any) -> str:
    raise AssertionError("not started in these tests")


@pytest.mark.trio
async def test_a_report_the_store_cannot_commit_is_kept_visible_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "followups.db"
    store = BackgroundStore.open(f"sqlite:///{path}", settings_for(tmp_path))
    release = trio.Event()

    async def worker() -> str:
        await release.wait()
        return "the subagent's result"

    try:
        async with SubagentPool(store, close="wait") as pool:
            task_id = pool.spawn(worker)
            tools = {tool.name: tool for tool in task_tools(pool, unused_subagent)}
            await trio.testing.wait_all_tasks_blocked()
            with write_locked(path):
                release.set()
                await trio.testing.wait_all_tasks_blocked()  # the worker returned; nothing raised
                record = store.get(task_id)
                assert record is not None
                assert record.state == TaskState.completed("the subagent's result")
                assert record.persistence_error is not None and "locked" in record.persistence_error
                assert committed_status(path, task_id) == "running"
                [listed] = store.list()
                assert listed.persistence_error == record.persistence_error
                status = await tools["task_status"].invoke({"task_id": task_id})
                assert "not saved to the task store yet" in status.content
                listing = await tools["list_tasks"].invoke({})
                assert "not saved to the task store yet" in listing.content
                with pytest.raises(StoreUnavailable):
                    store.gc_finished()
                assert store.get(task_id).persistence_error is not None  # type: ignore[union-attr]
            # the lock is gone: the retry timer commits it without any access
            await trio.to_thread.run_sync(wait_for_commit, path, task_id, "completed")
        assert store.get(task_id).persistence_error is None  # type: ignore[union-attr]
        assert store.gc_finished() == 0  # its notification is still undelivered
        assert [n.state.text for n in store.drain_notifications()] == ["the subagent's result"]
        assert store.drain_notifications() == []
    finally:
        store.close()


def test_the_next_access_retries_a_kept_report(tmp_path: Path) -> None:
    path = tmp_path / "followups.db"
    with BackgroundStore.open(f"sqlite:///{path}", settings_for(tmp_path)) as store:
        store.insert("t1")
        with write_locked(path):
            assert store.notify("t1", TaskState.completed("kept")) is True
            assert store.get("t1").persistence_error is not None  # type: ignore[union-attr]
        record = store.get("t1")  # this access commits it
        assert record is not None and record.persistence_error is None
        assert committed_status(path, "t1") == "completed"
        assert [n.state.text for n in store.drain_notifications()] == ["kept"]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {result.stderr.strip() or 'mount failed'}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_keeps_the_report_until_there_is_room(small_tmpfs: Path, tmp_path: Path) -> None:
    path = small_tmpfs / "followups.db"
    settings = settings_for(tmp_path, relay_inline_max_bytes=512 * 1024, relay_max_lines=10_000)
    big = "a result that does not fit " * 4_000  # inline: only the database can hold it
    with BackgroundStore.open(f"sqlite:///{path}", settings) as store:
        store.insert("t1")
        filler = fill(small_tmpfs)
        try:
            assert store.notify("t1", TaskState.completed(big)) is True
            record = store.get("t1")
            assert record is not None and record.state.text == big
            assert record.persistence_error is not None and "full" in record.persistence_error
        finally:
            filler.unlink()
        record = store.get("t1")
        assert record is not None and record.persistence_error is None
        assert [n.state.text for n in store.drain_notifications()] == [big]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_command_line_shows_what_another_process_could_not_commit(tmp_path: Path) -> None:
    import json
    import sys

    from followups.ledger import BackendUnavailable

    path = tmp_path / "followups.db"
    url = f"sqlite:///{path}"
    with BackgroundStore.open(url, settings_for(tmp_path)) as store:
        store.insert("t1")
        backend = store.backend
        real_finish = backend.finish

        def failing_finish(*args: object, **kwargs: object) -> bool:
            raise BackendUnavailable("disk I/O error", where=url)

        backend.finish = failing_finish  # type: ignore[method-assign]
        assert store.notify("t1", TaskState.completed("kept")) is True
        result = subprocess.run(
            [sys.executable, "-m", "followups", "tasks", "--store", url, "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        [task] = json.loads(result.stdout)
        assert task["id"] == "t1" and task["status"] == "completed"
        assert task["persistence_error"].startswith("disk I/O error")
        backend.finish = real_finish  # type: ignore[method-assign]
        assert store.get("t1").persistence_error is None  # type: ignore[union-attr]
        result = subprocess.run(
            [sys.executable, "-m", "followups", "tasks", "--store", url, "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        [task] = json.loads(result.stdout)
        assert task["status"] == "completed" and task["persistence_error"] is None
