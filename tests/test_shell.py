"""Background shell commands: the whole output is kept in a relay file, progress counts lines,
the exit status decides the outcome, and a cancel stops the process (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import anyio
import pytest
import trio

import followups.shell as shell_module
from followups import BackgroundStore, FollowupSettings, SubagentPool, TaskProgress, TaskStatus
from followups.shell import spawn_shell

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the commands are POSIX shell")


@pytest.fixture
def store(tmp_path: Path) -> BackgroundStore:
    return BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay", max_concurrent=1))


async def wait_until_finished(store: BackgroundStore, task_id: str) -> None:
    with trio.fail_after(20):
        while store.get(task_id).is_live:  # type: ignore[union-attr]
            await store.wait_for_change(timeout=1)


def saved_file(text: str) -> Path:
    match = re.search(r"saved to (\S+?)\.? ", text) or re.search(r"saved to (/\S+\.txt)", text)
    assert match, text
    return Path(match.group(1))


async def test_a_large_output_is_kept_whole_in_a_file_and_previewed(store: BackgroundStore) -> None:
    command = "for i in $(seq 1 20000); do echo line $i; done; echo oops >&2"
    async with store.subscribe(kinds={"shell"}) as events, SubagentPool(store, close="wait") as pool:
        task_id = spawn_shell(pool, command, name="build")
        await wait_until_finished(store, task_id)
        progress = [e for e in iter(events.receive_nowait, None) if isinstance(e, TaskProgress)]
    task = store.get("build")
    assert task is not None and task.kind == "shell" and task.state.status is TaskStatus.COMPLETED
    assert "line 1\n" in task.state.text and "line 20000" in task.state.text and "lines elided" in task.state.text
    whole = saved_file(task.state.text).read_text()
    assert whole.count("\n") == 20001 and whole.startswith("line 1\n") and "oops" in whole
    assert progress and progress[-1].message.startswith("20001 lines")
    assert len(task.state.text.encode()) <= store.settings.relay_inline_max_bytes


async def test_a_small_output_comes_back_inline(store: BackgroundStore) -> None:
    async with SubagentPool(store, close="wait") as pool:
        task_id = spawn_shell(pool, "echo hello")
    task = store.get(task_id)
    assert task is not None and task.state.text == "hello\n"


async def test_a_nonzero_exit_status_fails_the_task_with_its_output(store: BackgroundStore) -> None:
    async with SubagentPool(store, close="wait") as pool:
        task_id = spawn_shell(pool, "echo compiling; echo 'error: missing ;' >&2; exit 3")
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.FAILED
    assert task.state.text.startswith("The command exit status 3. Its output:\ncompiling\nerror: missing ;")


async def test_a_failed_long_output_keeps_the_line_naming_the_file(store: BackgroundStore) -> None:
    async with SubagentPool(store, close="wait") as pool:
        task_id = spawn_shell(pool, "seq 1 100000; exit 1")
    text = store.get(task_id).state.text  # type: ignore[union-attr]
    assert len(text) <= store.settings.max_error_chars
    assert saved_file(text).read_text().count("\n") == 100000


async def test_a_shell_takes_no_subagent_slot(store: BackgroundStore) -> None:
    async def forever() -> str:
        await anyio.sleep_forever()
        return "never"

    async with SubagentPool(store, close="wait") as pool:
        blocker = pool.spawn(forever)
        task_id = spawn_shell(pool, "echo still runs")
        await wait_until_finished(store, task_id)
        pool.cancel(blocker)
    assert store.get(task_id).state.text == "still runs\n"  # type: ignore[union-attr]


async def test_cancelling_stops_the_process_and_keeps_what_it_printed(store: BackgroundStore, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    async with SubagentPool(store) as pool:
        task_id = spawn_shell(pool, f"echo started; echo $$ > {marker}; sleep 60")
        with trio.fail_after(10):
            while not marker.exists() or not marker.read_text().strip():
                await store.wait_for_change(timeout=0.05)
        pid = int(marker.read_text())
        started = time.monotonic()
        assert store.cancel(task_id)
        await wait_until_finished(store, task_id)
    assert time.monotonic() - started < shell_module.KILL_GRACE_SECONDS
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.CANCELLED
    assert "started" in task.state.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    store: BackgroundStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shell_module, "KILL_GRACE_SECONDS", 0.3)
    marker = tmp_path / "ready"
    async with SubagentPool(store) as pool:
        task_id = spawn_shell(pool, f"trap '' TERM; touch {marker}; sleep 60")
        with trio.fail_after(10):
            while not marker.exists():
                await store.wait_for_change(timeout=0.05)
        store.cancel(task_id)
        await wait_until_finished(store, task_id)
    assert store.get(task_id).state.status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_timeout_stops_the_command_and_fails_the_task(store: BackgroundStore) -> None:
    async with SubagentPool(store, close="wait") as pool:
        task_id = spawn_shell(pool, "echo waiting; sleep 60", timeout=0.5)
    task = store.get(task_id)
    assert task is not None and task.state.status is TaskStatus.FAILED
    assert task.state.text.startswith("The command timed out after 0.5 s and was stopped. Its output:\nwaiting")


def test_a_shell_runs_under_asyncio_too(tmp_path: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay"))

    async def main() -> str:
        async with SubagentPool(store, close="wait") as pool:
            return spawn_shell(pool, "printf 'a\\nb\\n'")

    task_id = anyio.run(main, backend="asyncio")
    assert store.get(task_id).state.text == "a\nb\n"  # type: ignore[union-attr]


def test_an_empty_command_is_refused(store: BackgroundStore) -> None:
    pool = SubagentPool(store)
    with pytest.raises(ValueError, match="non-empty string"):
        spawn_shell(pool, "   ")
