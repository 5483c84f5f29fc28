"""Idle wake-up, shared by the adapters: the checks of its options and the wait itself.

This module imports no framework.
"""

from __future__ import annotations

import anyio

from ..session import Session

__all__ = ["check_idle_options", "wait_for_result"]


def check_idle_options(idle_timeout: float | None, max_idle_resumes: int) -> None:
    """Raise ``ValueError`` naming the option when ``idle_timeout`` is not a positive number of
    seconds or None, or ``max_idle_resumes`` not a non-negative int."""
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float) or not idle_timeout > 0
    ):
        raise ValueError(f"idle_timeout must be a positive number of seconds or None, got {idle_timeout!r}")
    if isinstance(max_idle_resumes, bool) or not isinstance(max_idle_resumes, int) or max_idle_resumes < 0:
        raise ValueError(f"max_idle_resumes must be a non-negative int, got {max_idle_resumes!r}")


async def wait_for_result(session: Session, timeout: float | None) -> bool:
    """Wait while subagents of ``session`` are live until a result is pending: True once one is,
    False when none is pending and none is live, or ``timeout`` seconds passed. Never drains,
    so a cancelled wait loses nothing."""
    with anyio.move_on_after(timeout):
        while not session.pending_count():
            if not session.live_count() or not await session.wait_for_notification():
                break
    return session.pending_count() > 0
