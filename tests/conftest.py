"""Fixtures shared by the whole suite. Nothing here writes outside pytest's tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from followups import BackgroundStore, FollowupSettings


@pytest.fixture
def relay_dir(tmp_path: Path) -> Path:
    return tmp_path / "relay"


@pytest.fixture
def settings(relay_dir: Path) -> FollowupSettings:
    return FollowupSettings(relay_dir=relay_dir)


@pytest.fixture
def store(settings: FollowupSettings) -> BackgroundStore:
    return BackgroundStore(settings)


def numbered_lines(count: int, prefix: str = "subagent output line") -> str:
    """``count`` newline-terminated lines ``"<prefix> <i>"``: a typical large output."""
    return "".join(f"{prefix} {i}\n" for i in range(count))
