"""Opening a SQLite store: URLs, the store_url setting and FOLLOWUPS_STORE_URL, the default
durable path, the schema version, the live-name index, and durability levels."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from followups import BackgroundStore, FollowupSettings, NameInUse, StoreUnavailable, TaskState
from followups.ledger import MemoryBackend, open_backend, resolve_store_url
from followups.ledger.sqlite import SCHEMA_VERSION, SqliteBackend, default_store_path, sqlite_path


def settings_for(tmp_path: Path, **overrides: object) -> FollowupSettings:
    return FollowupSettings(relay_dir=tmp_path / "relay", **overrides)  # type: ignore[arg-type]


def test_urls_follow_the_sqlalchemy_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///relative.db") == tmp_path / "relative.db"
    assert sqlite_path("sqlite:////absolute/path.db") == Path("/absolute/path.db")
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro"):
        with pytest.raises(ValueError, match="store URL"):
            sqlite_path(bad)
    with pytest.raises(ValueError, match="names no known backend"):
        open_backend("postgres://x", FollowupSettings())


def test_open_picks_the_url_then_the_setting_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = tmp_path / "env.db"
    from_setting = tmp_path / "setting.db"
    given = tmp_path / "given.db"
    monkeypatch.setenv("FOLLOWUPS_STORE_URL", f"sqlite:///{from_env}")
    with BackgroundStore.open(f"sqlite:///{given}", settings_for(tmp_path, store_url=f"sqlite:///{from_setting}")) as store:
        assert isinstance(store.backend, SqliteBackend) and store.backend.path == given
    with BackgroundStore.open(settings=settings_for(tmp_path, store_url=f"sqlite:///{from_setting}")) as store:
        assert store.backend.path == from_setting  # type: ignore[attr-defined]
    with BackgroundStore.open(settings=settings_for(tmp_path)) as store:
        assert store.backend.path == from_env  # type: ignore[attr-defined]
    monkeypatch.delenv("FOLLOWUPS_STORE_URL")
    with BackgroundStore.open(settings=settings_for(tmp_path)) as store:
        assert type(store.backend) is MemoryBackend
    assert resolve_store_url(None, FollowupSettings()) == "memory://"


def test_a_plain_store_keeps_the_memory_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOLLOWUPS_STORE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    store = BackgroundStore(settings_for(tmp_path))
    assert type(store.backend) is MemoryBackend
    store.close()
    assert not (tmp_path / "env.db").exists()


def test_the_default_durable_path_is_per_user_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store_path() == tmp_path / "state" / "followups" / "followups.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".local" / "state" / "followups" / "followups.db"


def test_a_new_file_gets_the_current_schema_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    SqliteBackend(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        conn.commit()
    with pytest.raises(Exception, match=f"schema version {SCHEMA_VERSION + 1}, newer than this followups supports"):
        SqliteBackend(path)


def test_the_database_refuses_two_live_tasks_with_one_name(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with BackgroundStore.open(f"sqlite:///{path}", settings_for(tmp_path)) as store:
        store.insert("t1", name="worker")
        with pytest.raises(NameInUse):
            store.insert("t2", name="worker")
        store.notify("t1", TaskState.completed("done"))
        store.insert("t3", name="worker")  # the name is free once t1 finished
    with contextlib.closing(sqlite3.connect(path)) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE runs SET status = 'running' WHERE task_id = 't1'")


def test_durability_full_runs_the_database_with_synchronous_full(tmp_path: Path) -> None:
    normal = open_backend(f"sqlite:///{tmp_path / 'n.db'}", settings_for(tmp_path))
    full = open_backend(f"sqlite:///{tmp_path / 'f.db'}", settings_for(tmp_path, durability="full"))
    try:
        assert isinstance(normal, SqliteBackend) and isinstance(full, SqliteBackend)
        assert normal._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert full._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert normal.blocking is False and full.blocking is True
    finally:
        normal.close()
        full.close()


def test_a_closed_backend_says_so(tmp_path: Path) -> None:
    store = BackgroundStore.open(f"sqlite:///{tmp_path / 'f.db'}", settings_for(tmp_path))
    backend = store.backend
    store.close()
    with pytest.raises(StoreUnavailable, match="f.db is unavailable: the backend is closed"):
        BackgroundStore(settings_for(tmp_path), backend=backend)


def test_the_store_settings_are_validated_naming_the_field() -> None:
    from pydantic import ValidationError

    for bad in (-1, True):
        with pytest.raises(ValidationError, match="sqlite_busy_timeout_seconds"):
            FollowupSettings(sqlite_busy_timeout_seconds=bad)
    assert FollowupSettings(store_url="sqlite:///x.db").store_url == "sqlite:///x.db"
    with pytest.raises(ValueError, match="names no known backend"):
        BackgroundStore.open(settings=FollowupSettings(store_url="nosuch://x"))


async def test_a_pool_on_a_full_durability_store_runs_its_calls_off_the_loop(tmp_path: Path) -> None:
    import threading

    import trio

    from followups import SubagentPool

    loop_thread = threading.get_ident()
    settings = settings_for(tmp_path, durability="full")
    with BackgroundStore.open(f"sqlite:///{tmp_path / 'full.db'}", settings) as store:
        backend = store.backend
        assert isinstance(backend, SqliteBackend) and backend.blocking
        threads: set[int] = set()
        finish = backend.finish

        def spying_finish(*args: object, **kwargs: object) -> bool:
            threads.add(threading.get_ident())
            return finish(*args, **kwargs)  # type: ignore[arg-type]

        backend.finish = spying_finish  # type: ignore[method-assign]

        async def work(n: int) -> str:
            await trio.sleep(0)
            return f"result {n}"

        async with SubagentPool(store, close="wait") as pool:
            for n in range(3):
                pool.spawn(work, n, task_id=f"t{n}")
        assert sorted(n.state.text for n in store.drain_notifications()) == ["result 0", "result 1", "result 2"]
        assert threads and loop_thread not in threads
