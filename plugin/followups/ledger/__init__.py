"""The ledger: the one source of truth for every task's life, behind a backend protocol.

:mod:`followups.ledger.protocol` states the operations and their meaning;
:class:`MemoryBackend` keeps them in this process; :func:`open_backend` picks a backend by URL.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .memory import MemoryBackend
from .protocol import (
    Admission,
    AdmissionRefused,
    BackendUnavailable,
    CancelReport,
    CreateRequest,
    Effect,
    FinishReport,
    Lease,
    LeaseRequest,
    LedgerBackend,
    LedgerListener,
    RunAction,
    Selection,
    SessionChanged,
    SessionCounts,
)

if TYPE_CHECKING:
    from ..settings import FollowupSettings

__all__ = [
    "Admission",
    "AdmissionRefused",
    "BackendUnavailable",
    "CancelReport",
    "CreateRequest",
    "Effect",
    "FinishReport",
    "Lease",
    "LeaseRequest",
    "LedgerBackend",
    "LedgerListener",
    "MemoryBackend",
    "RunAction",
    "Selection",
    "SessionChanged",
    "SessionCounts",
    "open_backend",
    "resolve_store_url",
]

STORE_URL_VARIABLE = "FOLLOWUPS_STORE_URL"


def open_backend(url: str, settings: FollowupSettings) -> LedgerBackend:
    """The backend ``url`` names: ``memory://`` (this process), ``sqlite:///…`` (a database
    file), ``redis://…`` / ``rediss://…`` (a Redis server). Raises ``ValueError`` naming the
    URL when no backend takes it."""
    if not isinstance(url, str):
        raise TypeError(f"store URL must be a str, got {type(url).__name__}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        if url.lower() not in ("memory://", "memory:///"):
            raise ValueError(f"store URL {url!r}: a memory store takes no path; use 'memory://'")
        return MemoryBackend()
    if scheme == "sqlite":
        from .sqlite import SqliteBackend, sqlite_path

        return SqliteBackend(
            sqlite_path(url),
            busy_timeout=settings.sqlite_busy_timeout_seconds,
            synchronous="FULL" if settings.durability == "full" else "NORMAL",
        )
    if scheme in ("redis", "rediss"):
        from .redis import RedisBackend

        return RedisBackend(
            url,
            worker_ttl_seconds=settings.worker_ttl_seconds,
            timeout_seconds=settings.redis_timeout_seconds,
            event_stream_length=settings.redis_event_stream_length,
        )
    raise ValueError(
        f"store URL {url!r} names no known backend; use memory://, sqlite:///path/to/file.db or redis://host:port/db"
    )


def resolve_store_url(url: str | None, settings: FollowupSettings) -> str:
    """The store URL to open: ``url``, else ``settings.store_url``, else the
    ``FOLLOWUPS_STORE_URL`` environment variable, else ``memory://``."""
    return url or settings.store_url or os.environ.get(STORE_URL_VARIABLE) or "memory://"
