"""Fixtures shared by the whole suite. Nothing here writes outside pytest's tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redis_server import INSTALL_HINT, RedisServer, redis_server_binary

from followups import BackgroundStore, FollowupSettings


@pytest.fixture(autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the per-user durable store of whoever runs the suite; child
    processes inherit the variable."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def relay_dir(tmp_path: Path) -> Path:
    return tmp_path / "relay"


@pytest.fixture
def settings(relay_dir: Path) -> FollowupSettings:
    return FollowupSettings(relay_dir=relay_dir)


@pytest.fixture
def store(settings: FollowupSettings) -> BackgroundStore:
    return BackgroundStore(settings)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run_example(tmp_path: Path) -> Callable[[str], str]:
    """``run_example(name)`` runs ``examples/<name>`` as a user would, in a fresh directory
    with a throwaway home, and returns its stdout once it has checked that the script exited
    0, printed nothing on stderr and wrote nothing to the home directory."""

    def run(name: str) -> str:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / name)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert list(home.iterdir()) == [], "the example wrote to the home directory"
        return result.stdout

    return run


# -- a real redis-server for the Redis backend's tests ------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` per test session, on a free loopback port, AOF on. Skipped with how
    to install it when the binary is missing, unless ``FOLLOWUPS_REQUIRE_REDIS=1``."""
    if redis_server_binary() is None:
        message = f"{INSTALL_HINT}; the Redis backend's tests need it"
        if os.environ.get("FOLLOWUPS_REQUIRE_REDIS") == "1":
            pytest.fail(message + " (FOLLOWUPS_REQUIRE_REDIS=1)", pytrace=False)
        pytest.skip(message)
    try:
        import redis  # noqa: F401
    except ImportError:
        message = "the Redis backend's tests need the redis extra: pip install -e '.[redis]'"
        if os.environ.get("FOLLOWUPS_REQUIRE_REDIS") == "1":
            pytest.fail(message + " (FOLLOWUPS_REQUIRE_REDIS=1)", pytrace=False)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
