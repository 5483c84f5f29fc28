from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from followups.cli import main
from followups.demo import DemoOptions, run_demo


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_demo_session_shows_every_kind_of_outcome(tmp_path: Path, backend: str) -> None:
    out = io.StringIO()
    report = run_demo(DemoOptions(backend=backend, relay_dir=tmp_path), out)
    transcript = out.getvalue()
    assert report.refusals == 1
    assert sorted(report.outcomes.values()) == ["cancelled", *["completed"] * 5, "failed"]
    assert report.outcomes["run the test suite"] == "completed"
    assert all(r.startswith("<system-reminder>") and r.endswith("</system-reminder>") for r in report.reminders)
    assert "task error truncated" in transcript
    relayed = {path.name.split("-")[0]: path for path in tmp_path.iterdir()}
    assert relayed["task"].stat().st_size > 1_000_000, "the 1 MB test log"
    assert relayed["shell"].read_text().count("\n") == 30001, "the shell's whole output"
    for path in relayed.values():
        assert f"saved to {path}" in transcript
    assert "lines elided" in transcript
    assert "▸ status: running" in transcript
    assert "Cannot start another background task: 4 of 4" in transcript
    # a named task, steered by a message while it runs
    assert "named 'readme'" in transcript
    assert "README summary, as asked (Focus on the installation steps.)" in transcript
    # a child of a subagent, cancelled with its parent by cancel_task(tree=true)
    assert "Also cancelling 1 task(s) it started" in transcript
    assert sorted(report.cancel_requests.values()) == ["user", "user"]
    assert report.progress_lines >= 3 and "▸ progress crawler: crawled 1 pages" in transcript


def test_demo_honours_the_cap_and_count_options(tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_demo(DemoOptions(max_concurrent=2, subagents=8, relay_dir=tmp_path), out)
    assert len(report.outcomes) == 9, "eight subagents and the shell"
    assert report.refusals == 1


def test_demo_workers_need_a_redis_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workers", "2"]) == 2
    assert "--workers needs a redis:// store" in capsys.readouterr().err
    assert main(["demo", "--workers", "2", "--store", "sqlite:///x.db"]) == 2
    assert "got 'sqlite:///x.db'" in capsys.readouterr().err


def test_demo_command_exits_zero_and_prints_the_reminders(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "followups", "demo", "--relay-dir", str(tmp_path / "relay")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<system-reminder>") >= 3
    assert "[task " in result.stdout and "] failed: RuntimeError" in result.stdout
    assert "session over" in result.stdout


def test_the_demo_command_keeps_its_run_in_the_per_user_database(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    sessions = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "followups", "demo", "--relay-dir", str(tmp_path / "relay")],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert result.returncode == 0, result.stderr
        sessions.append(result.stdout.rstrip().rpartition("--session ")[2])
    assert (tmp_path / "state" / "followups" / "followups.db").is_file()
    assert sessions[0] != sessions[1], "each run is a conversation of its own"
    for session in sessions:
        listed = subprocess.run(
            [sys.executable, "-m", "followups", "tasks", "--session", session, "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert listed.returncode == 0, listed.stderr
        tasks = json.loads(listed.stdout)
        assert {task["session"] for task in tasks} == {session}
        assert {task["name"] for task in tasks} >= {"readme", "crawler"}
        assert all(task["status"] not in ("queued", "running") for task in tasks)


def test_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["demo", "--help"])
    assert excinfo.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--max-concurrent", "--subagents", "--backend", "--template-dir"):
        assert option in help_text


def test_a_broken_template_dir_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "followup.j2").write_text("{% if %}")
    assert main(["demo", "--template-dir", str(tmp_path), "--relay-dir", str(tmp_path / "r")]) == 2
    assert "followup.j2" in capsys.readouterr().err
