"""Helpers shared by test modules (importable because ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from followups import BackgroundStore


def numbered_lines(count: int, prefix: str = "subagent output line") -> str:
    """``count`` newline-terminated lines ``"<prefix> <i>"``: a typical large output."""
    return "".join(f"{prefix} {i}\n" for i in range(count))


class FakeClock:
    """A wall clock that moves only when told: pass ``clock=FakeClock()`` to a store to make
    lease expiry and stall detection deterministic."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Clock = Callable[[], float]


StoreFactory = Callable[..., "BackgroundStore"]
"""The contract suite's ``make_store(settings=None, *, like=None, **options)`` fixture."""
