"""The backend contract suite: every test in this directory runs once per ledger backend.

``make_store(settings=None, like=None, **options)`` builds a store on a fresh backend of the
current kind (``like=store`` gives a second store on the same ledger, as a second process
would have), and ``store`` is one such store with the default test settings. Backends are
closed after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import StoreFactory

from followups import BackgroundStore, FollowupSettings
from followups.ledger import LedgerBackend, MemoryBackend
from followups.ledger.sqlite import SqliteBackend

BackendFactory = Callable[[Path, FollowupSettings, "LedgerBackend | None", pytest.FixtureRequest], LedgerBackend]


def memory_backend(
    tmp_path: Path, settings: FollowupSettings, like: LedgerBackend | None, request: pytest.FixtureRequest
) -> LedgerBackend:
    return like if like is not None else MemoryBackend()


def sqlite_backend(
    tmp_path: Path, settings: FollowupSettings, like: LedgerBackend | None, request: pytest.FixtureRequest
) -> LedgerBackend:
    """A temporary database per test; ``like`` gives a second backend object on the same file.
    Every operation reloads from the file, so the suite checks what was committed, not what a
    backend object remembers; except in the hammer tests, which check concurrency and would
    take minutes that way."""
    path = like.path if isinstance(like, SqliteBackend) else tmp_path / "ledger" / f"followups-{uuid.uuid4().hex[:8]}.db"
    reload = request.node.module.__name__.rpartition(".")[2] != "test_concurrency"
    return SqliteBackend(path, busy_timeout=settings.sqlite_busy_timeout_seconds, reload_every_operation=reload)


def sqlite_cached_backend(
    tmp_path: Path, settings: FollowupSettings, like: LedgerBackend | None, request: pytest.FixtureRequest
) -> LedgerBackend:
    """The SQLite backend as applications get it: the mirror reloads only when another
    connection committed."""
    path = like.path if isinstance(like, SqliteBackend) else tmp_path / "ledger" / f"followups-{uuid.uuid4().hex[:8]}.db"
    return SqliteBackend(path, busy_timeout=settings.sqlite_busy_timeout_seconds)


def redis_backend(
    tmp_path: Path, settings: FollowupSettings, like: LedgerBackend | None, request: pytest.FixtureRequest
) -> LedgerBackend:
    """A fresh key prefix on the session's redis-server per test; ``like`` gives a second
    backend (another worker's connection) on the same prefix."""
    from followups.ledger.redis import RedisBackend

    server = request.getfixturevalue("redis_server")
    prefix = like.prefix if isinstance(like, RedisBackend) else f"t-{uuid.uuid4().hex[:12]}"
    return RedisBackend(server.url, prefix=prefix, worker_ttl_seconds=settings.worker_ttl_seconds)


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "sqlite": sqlite_backend,
    "sqlite-cached": sqlite_cached_backend,
    "redis": redis_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def ledger_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(ledger_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    stores: list[BackgroundStore] = []
    backends: list[LedgerBackend] = []

    def make(
        settings: FollowupSettings | None = None, *, like: BackgroundStore | None = None, **options: Any
    ) -> BackgroundStore:
        settings = settings or FollowupSettings(relay_dir=tmp_path / "relay")
        backend = BACKENDS[ledger_kind](tmp_path, settings, None if like is None else like.backend, request)
        if backend not in backends:
            backends.append(backend)
        store = BackgroundStore(settings, backend=backend, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    for backend in backends:
        backend.close()


@pytest.fixture(autouse=True)
def _every_test_is_parametrized_by_backend(ledger_kind: str) -> None:
    """Makes each test of the suite run once per backend, even one that builds no store."""


@pytest.fixture
def store(make_store: StoreFactory, settings: FollowupSettings) -> BackgroundStore:
    return make_store(settings)
