"""Reminder labels on the durable stores: a process that died holding a delivery whose framework
history keeps no metadata (an Anthropic ``messages`` list) is recognised by the next process
from the saved history, so the result is neither lost nor shown twice."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest

from followups import BackgroundStore, FollowupSettings
from followups.ledger.labels import ReminderLabel
from followups.ledger.sqlite import SCHEMA_VERSION, SqliteBackend

pytest.importorskip("anthropic")

from followups.adapters.anthropic_messages import reminder_for_call, user_texts  # noqa: E402

DYING_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    from followups import BackgroundStore, FollowupSettings, TaskState
    from followups.adapters.anthropic_messages import reminder_for_call

    url, relay_dir, saved = sys.argv[1:]
    store = BackgroundStore.open(url, FollowupSettings(relay_dir=relay_dir, worker_ttl_seconds=1, delivery_lease_seconds=2))
    conversation = store.session("conv-1")
    conversation.insert("lint")
    conversation.notify("lint", TaskState.completed("lint: no problems found"))
    messages = [{"role": "user", "content": "What finished?"}]
    reminder_for_call(conversation, messages)  # taken and placed; the model call succeeds...
    with open(saved, "w") as file:
        json.dump(messages, file)  # ...the app saves the history...
    os._exit(0)  # ...and the process dies before the delivery is confirmed
    """
)


@pytest.fixture(params=["sqlite", "redis"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'followups.db'}"
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=labels-{uuid.uuid4().hex[:8]}"


def test_a_history_saved_by_a_process_that_died_is_recognised_by_the_next_one(durable_url: str, tmp_path: Path) -> None:
    url = durable_url
    saved = tmp_path / "messages.json"
    subprocess.run(
        [sys.executable, "-c", DYING_PROCESS, url, str(tmp_path / "relay"), str(saved)], check=True, timeout=60
    )
    messages = json.loads(saved.read_text())
    assert "lint: no problems found" in json.dumps(messages)

    store = BackgroundStore.open(url, FollowupSettings(relay_dir=tmp_path / "relay"))
    with store:
        conversation = store.session("conv-1")
        messages.append({"role": "assistant", "content": "Noted."})
        messages.append({"role": "user", "content": "Anything else?"})
        with reminder_for_call(conversation, messages) as placed:
            assert placed.delivery is None, "the saved reminder settled the result: no second copy"
        assert sum("lint: no problems found" in text for text in user_texts(messages)) == 1
        assert conversation.pending_count() == 0 and conversation.leases() == []
        assert not conversation.reminder_labels.has_any("conv-1")


def test_a_reminder_the_dead_process_never_saved_is_delivered_by_the_next_one(durable_url: str, tmp_path: Path) -> None:
    url = durable_url
    subprocess.run(
        [sys.executable, "-c", DYING_PROCESS, url, str(tmp_path / "relay"), str(tmp_path / "messages.json")],
        check=True,
        timeout=60,
    )
    settings = FollowupSettings(relay_dir=tmp_path / "relay", worker_ttl_seconds=1)
    with BackgroundStore.open(url, settings) as store:
        messages = [{"role": "user", "content": "What finished?"}]  # the saved history was lost
        conversation = store.session("conv-1")
        # the dead process's lease reopens on open (SQLite), or with its worker's heartbeat or its expiry (Redis)
        async def lease_reopened() -> None:
            with anyio.fail_after(30):
                while conversation.pending_count() == 0:
                    await conversation.wait_for_change(timeout=1)

        anyio.run(lease_reopened)
        with reminder_for_call(conversation, messages) as placed:
            assert placed.delivery is not None
        assert sum("lint: no problems found" in text for text in user_texts(messages)) == 1
        assert conversation.pending_count() == 0


def test_sqlite_labels_are_shared_by_processes_bounded_per_session_and_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "followups.db"
    first, second = SqliteBackend(path), SqliteBackend(path)
    try:
        first.reminder_labels.max_labels = 2
        for n in range(3):
            first.reminder_labels.add(ReminderLabel(f"lease-{n}", "a", (f"n{n}",), f"d{n}"))
        second.reminder_labels.add(ReminderLabel("lease-b", "b", ("nb",), "d0"))
        found = second.reminder_labels.find("a", {"d0", "d1", "d2"})
        assert [label.lease_id for label in found] == ["lease-1", "lease-2"], "the oldest was dropped"
        assert found[0] == ReminderLabel("lease-1", "a", ("n1",), "d1", 0)
        assert [label.lease_id for label in first.reminder_labels.find("b", {"d0"})] == ["lease-b"]
        second.reminder_labels.discard("lease-1")
        assert [label.lease_id for label in first.reminder_labels.find("a", {"d1", "d2"})] == ["lease-2"]
        assert first.reminder_labels.has_any("b") and not first.reminder_labels.has_any("c")
    finally:
        first.close()
        second.close()


def test_a_locked_sqlite_database_degrades_labels_instead_of_raising(tmp_path: Path) -> None:
    path = tmp_path / "followups.db"
    backend = SqliteBackend(path, busy_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        backend.reminder_labels = type(backend.reminder_labels)(path, busy_timeout=0.05)
        blocker.execute("BEGIN EXCLUSIVE")
        backend.reminder_labels.add(ReminderLabel("lease-x", "a", ("n",), "d"))  # logged, not raised
        assert backend.reminder_labels.find("a", {"d"}) == []
        assert backend.reminder_labels.has_any("a") is False
        blocker.execute("ROLLBACK")
        backend.reminder_labels.add(ReminderLabel("lease-x", "a", ("n",), "d"))
        assert backend.reminder_labels.has_any("a")
    finally:
        blocker.close()
        backend.close()


def test_a_version_1_database_is_migrated_to_hold_labels(tmp_path: Path) -> None:
    from followups.ledger.sqlite import _MIGRATIONS

    path = tmp_path / "followups.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_MIGRATIONS[1])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
    backend = SqliteBackend(path)
    try:
        backend.reminder_labels.add(ReminderLabel("lease-1", "a", ("n",), "d"))
        assert backend.reminder_labels.has_any("a")
    finally:
        backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,) == (2,)


def test_redis_labels_are_bounded_per_session_kept_apart_and_dropped_by_lease(redis_server: object) -> None:
    from followups.ledger.redis import RedisBackend

    url = f"{redis_server.url}?prefix=labels-{uuid.uuid4().hex[:8]}"  # type: ignore[attr-defined]
    first, second = RedisBackend(url), RedisBackend(url)
    try:
        first.reminder_labels.max_labels = 2
        for n in range(3):
            first.reminder_labels.add(ReminderLabel(f"lease-{n}", "a", (f"n{n}",), f"d{n}", n))
        second.reminder_labels.add(ReminderLabel("lease-b", "b", ("nb",), "d0"))
        found = second.reminder_labels.find("a", {"d0", "d1", "d2"})
        assert [label.lease_id for label in found] == ["lease-1", "lease-2"], "the oldest was dropped"
        assert found[0] == ReminderLabel("lease-1", "a", ("n1",), "d1", 1)
        second.reminder_labels.discard("lease-1")
        assert [label.lease_id for label in first.reminder_labels.find("a", {"d1", "d2"})] == ["lease-2"]
        assert first.reminder_labels.has_any("b") and not first.reminder_labels.has_any("c")
    finally:
        first.close()
        second.close()
