"""``followups tasks`` against a live SQLite store: list (``--json`` parsed), show, a cancel the
owning process carries out, gc, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from followups import BackgroundStore, FollowupSettings, TaskState
from followups.cli import main

TIMEOUT = 30.0


@pytest.fixture
def live(tmp_path: Path) -> tuple[str, BackgroundStore]:
    url = f"sqlite:///{tmp_path / 'followups.db'}"
    store = BackgroundStore.open(url, FollowupSettings(relay_dir=tmp_path / "relay"))
    conv = store.session("conv-42")
    conv.insert("t1", description="summarise", name="summary")
    conv.report_progress("t1", "read 3 files")
    conv.insert("t2")
    conv.notify("t2", TaskState.completed("done"))
    store.session("other").insert("t3", kind="shell")
    yield url, store
    store.close()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["tasks", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_list_as_json_gives_every_task_with_its_fields(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live
    status, out, _ = run_cli(capsys, "--store", url, "--json")
    assert status == 0
    tasks = {task["id"]: task for task in json.loads(out)}
    assert set(tasks) == {"t1", "t2", "t3"}
    assert tasks["t1"] == {
        "id": "t1",
        "session": "conv-42",
        "status": "running",
        "kind": "subagent",
        "name": "summary",
        "progress": "read 3 files",
        "created_at": tasks["t1"]["created_at"],
        "finished_at": None,
        "persistence_error": None,
    }
    assert tasks["t2"]["status"] == "completed" and tasks["t2"]["finished_at"] is not None
    assert tasks["t3"]["kind"] == "shell" and tasks["t3"]["session"] == "other"


def test_list_filters_by_session_and_status(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live
    _, out, _ = run_cli(capsys, "--store", url, "--session", "conv-42", "--status", "completed", "--json")
    assert [task["id"] for task in json.loads(out)] == ["t2"]
    _, out, _ = run_cli(capsys, "--store", url, "--status", "running", "--status", "completed", "--json")
    assert sorted(task["id"] for task in json.loads(out)) == ["t1", "t2", "t3"]


def test_plain_list_is_a_table(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live
    status, out, _ = run_cli(capsys, "--store", url, "--session", "conv-42")
    assert status == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "SESSION", "STATUS", "KIND"]
    assert [row.split()[0] for row in rows] == ["t1", "t2"]
    assert "read 3 files" in rows[0]


def test_show_prints_the_record_and_finds_a_task_by_name(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live
    status, out, _ = run_cli(capsys, "show", "summary", "--store", url)
    assert status == 0
    assert out.startswith("task t1 (session conv-42, subagent, named 'summary')")
    assert "status: running" in out and "relayed output: -" in out
    status, out, _ = run_cli(capsys, "show", "t2", "--store", url, "--json")
    record = json.loads(out)
    assert record["status"] == "completed" and record["text"] == "done" and record["relay_path"] is None


def test_an_unknown_id_exits_non_zero_with_one_line(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live
    for action in ("show", "cancel"):
        status, out, err = run_cli(capsys, action, "nope", "--store", url)
        assert status == 1 and out == ""
        assert err.splitlines() == [f"followups tasks: no task 'nope' in {url}"]


def test_the_command_line_fails_without_a_traceback(live: tuple[str, BackgroundStore]) -> None:
    url, _ = live
    result = subprocess.run(
        [sys.executable, "-m", "followups", "tasks", "show", "nope", "--store", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"followups tasks: no task 'nope' in {url}"]
    result = subprocess.run(
        [sys.executable, "-m", "followups", "tasks", "--store", url, "--json"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 3


def test_cancel_is_carried_out_by_the_owning_process(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, store = live
    cancelled = threading.Event()

    class Handle:
        def cancel(self) -> None:
            cancelled.set()

    store.session("conv-42").attach_handle("t1", Handle())
    result = subprocess.run(
        [sys.executable, "-m", "followups", "tasks", "cancel", "t1", "--store", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "cancel requested for task t1" in result.stdout
    assert cancelled.wait(TIMEOUT)  # the owner's watcher saw the request and cancelled the run
    record = store.session("conv-42").get("t1")
    assert record is not None and record.cancel_requested_by == "user"


def test_gc_removes_delivered_finished_records(live: tuple[str, BackgroundStore], capsys: pytest.CaptureFixture[str]) -> None:
    url, store = live
    status, out, _ = run_cli(capsys, "gc", "--store", url)
    assert status == 0 and out == "removed 0 finished record(s)\n"  # t2's result is undelivered
    assert [n.id for n in store.session("conv-42").drain_notifications()] == ["t2"]
    status, out, _ = run_cli(capsys, "gc", "--store", url)
    assert out == "removed 1 finished record(s)\n"
    _, out, _ = run_cli(capsys, "--store", url, "--json")
    assert sorted(task["id"] for task in json.loads(out)) == ["t1", "t3"]


def test_a_missing_store_lists_nothing_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    status, out, _ = run_cli(capsys, "--store", url, "--json")
    assert status == 0 and json.loads(out) == []
    status, _, err = run_cli(capsys, "show", "t1", "--store", url)
    assert status == 1 and err.startswith("followups tasks: no task store at ")
    assert not (tmp_path / "absent.db").exists()


def test_the_demo_runs_on_a_durable_store_the_cli_then_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--store", url, "--relay-dir", str(tmp_path / "relay")]) == 0
    assert "session over" in capsys.readouterr().out
    status, out, _ = run_cli(capsys, "--store", url, "--json")
    tasks = json.loads(out)
    assert status == 0 and tasks
    assert all(task["status"] in ("completed", "failed", "cancelled") for task in tasks)
