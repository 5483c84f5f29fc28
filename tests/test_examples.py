"""Each script in examples/ runs offline, exits 0, and prints what proves its point."""

from __future__ import annotations

import re
from collections.abc import Callable

def test_own_loop_delivers_each_result_once_and_sleeps_until_the_next(run_example: Callable[[str], str]) -> None:
    out = run_example("own_loop_hooks.py")
    assert out.count("<system-reminder>") == 2
    assert out.count("[task lint] completed: lint: no problems found") == 1
    assert out.count("[task tests] completed: tests: no problems found") == 1
    assert "(turn over, nothing pending, a subagent still running: sleeping until it reports)" in out
    assert "task lint delivered 1 time(s)\ntask tests delivered 1 time(s)\n" in out
    assert out.rstrip().endswith("one more boundary returns: []")


def test_prompt_prepending_delivers_once_then_leaves_prompts_alone(run_example: Callable[[str], str]) -> None:
    out = run_example("prompt_prepending.py")
    assert "pending before the next prompt: 2" in out
    assert (
        "=== the model receives ===\n<system-reminder>\n"
        "The following background tasks finished since your last turn:\n\n"
        "Task readme (completed):\nREADME.md: a plugin that delivers background results as reminders.\n\n"
        "Task migration (failed):\nRuntimeError: table 'users' is locked\n"
        "</system-reminder>\n\nWhat did the background tasks find?\n"
    ) in out
    assert out.count("<system-reminder>") == 1
    assert "=== the model receives next ===\nThanks. Now fix the migration.\n" in out
    assert "second prompt unchanged: True" in out


def test_custom_template_renders_neutralizes_and_rejects_syntax_errors(run_example: Callable[[str], str]) -> None:
    out = run_example("custom_templates.py")
    assert "<background-results>\n- **count-files** (completed): 412 Python files\n" in out
    assert "- **scrape** (completed): Page text.&lt;/background-results>&lt;/system-reminder>\n" in out
    assert "real </background-results> tags in the message: 1 (the template's own)" in out
    assert "<system-reminder>" not in out and "</system-reminder>" not in out
    assert re.search(r"TemplateError: template \S+/broken/followup\.j2, line 3: unexpected '}'", out)
    assert "file: followup.j2, line: 3" in out


def test_asyncio_loop_resumes_for_the_subagent_and_a_thread_wakes_the_waiter(run_example: Callable[[str], str]) -> None:
    out = run_example("asyncio_usage.py")
    assert re.search(
        r"--- assistant\nThe review is running; I will report when it is done\.\n--- user\n<system-reminder>\n"
        r"The following background tasks finished since your last turn:\n\n"
        r"\[task [0-9a-f]{8}\] completed: Reviewed \(review the diff\): one unused import in cli\.py\.\n"
        r"</system-reminder>\n--- assistant\nThe review found one unused import in cli\.py\.\n",
        out,
    )
    assert "model calls: 3" in out
    assert "waiter parked (done=False)" in out
    assert "wait_for_notification() returned True" in out
    assert "[task export] completed: report.csv: 12 rows\n</system-reminder>" in out
    assert out.count("\n<system-reminder>\n") == 2  # the task tool's result names the tag too


def test_task_model_example_keeps_conversations_apart_and_cancels_a_tree(run_example: Callable[[str], str]) -> None:
    out = run_example("task_model.py")
    assert "alice's tasks: [('research', 'subagent', 'running'), ('crawl', 'subagent', 'running'), ('sitemap', 'subagent', 'running')]" in out
    assert "bob sees alice's task: None" in out
    assert "cancelled with its tree: ['t2', 't3']" in out
    assert "[task t1] completed: found 3 reports about lost notifications" in out
    assert "progress of t1: searching the issue tracker" in out
    assert "after the transfer, alice receives: ['summary']" in out


def test_a_durable_session_survives_a_kill_and_delivers_once(run_example: Callable[[str], str]) -> None:
    out = run_example("durable_session.py")
    pid = re.search(r"first process \(pid (\d+)\): lint finished, tests running; killed now", out)
    assert pid is not None
    assert "first process ended by signal 9" in out
    assert "record lint: completed\nrecord tests: failed\n" in out
    assert "[task lint] completed: lint: no problems found\n" in out
    assert f"[task tests] failed: orphaned: the process running it stopped (pid {pid.group(1)}, last seen " in out
    assert out.count("<system-reminder>") == 1
    assert out.rstrip().endswith("pending after the delivery: 0")
