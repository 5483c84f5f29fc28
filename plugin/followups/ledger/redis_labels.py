"""Reminder labels kept on a Redis store's server, so any worker recognises the reminders of
one that died (see :mod:`followups.ledger.labels`).

Each session's labels are one hash, ``{prefix:session}:labels`` (lease id → the label as JSON),
in the session's own cluster slot; ``{prefix}:label-sessions`` maps a lease id to its session,
so a label can be dropped by lease id alone. A label is a hint for recognising a reminder in a
saved history, never part of a task's life: a failure to read or write one (the server
unreachable or slow) is logged and degrades to what a store without labels does, a reminder
found in a reloaded history shown once more, never lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from typing import Any

import redis

from .labels import ReminderLabel

__all__ = ["RedisReminderLabels"]

logger = logging.getLogger("followups.ledger.redis")


class RedisReminderLabels:
    """:class:`~followups.ledger.labels.ReminderLabels` on the Redis server behind ``client``
    (a ``redis.Redis``), under the key ``prefix``. At most ``max_labels`` per session: past it
    the oldest are dropped. Safe from any thread (redis-py's connection pool); each call is one
    or two round trips and never raises."""

    def __init__(self, client: Any, prefix: str, *, max_labels: int = 4096) -> None:
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise ValueError(f"max_labels must be a positive int, got {max_labels!r}")
        self.max_labels = max_labels
        self._client = client
        self._prefix = prefix

    def _session_key(self, session: str) -> str:
        return f"{{{self._prefix}:{session}}}:labels"

    @property
    def _owners_key(self) -> str:
        return f"{{{self._prefix}}}:label-sessions"

    def add(self, label: ReminderLabel) -> None:
        encoded = json.dumps(
            {"ids": list(label.notification_ids), "digest": label.digest, "prior": label.prior, "added": time.time()}
        )
        key = self._session_key(label.session)
        try:
            self._client.hset(key, label.lease_id, encoded)
            self._client.hset(self._owners_key, label.lease_id, label.session)
            if self._client.hlen(key) > self.max_labels:
                entries = self._client.hgetall(key)
                oldest = sorted(entries, key=lambda lease: json.loads(entries[lease])["added"])
                dropped = oldest[: len(entries) - self.max_labels]
                if dropped:
                    self._client.hdel(key, *dropped)
                    self._client.hdel(self._owners_key, *dropped)
        except (redis.RedisError, OSError):
            logger.warning("could not keep the label of lease %s on Redis", label.lease_id, exc_info=True)

    def find(self, session: str, digests: Collection[str]) -> list[ReminderLabel]:
        wanted = set(digests)
        if not wanted:
            return []
        try:
            entries = self._client.hgetall(self._session_key(session))
        except (redis.RedisError, OSError):
            logger.warning("could not read the reminder labels of %r on Redis", session, exc_info=True)
            return []
        found = []
        for lease_id, encoded in entries.items():
            data = json.loads(encoded)
            if data["digest"] in wanted:
                lease = lease_id.decode() if isinstance(lease_id, bytes) else lease_id
                found.append((data["added"], ReminderLabel(lease, session, tuple(data["ids"]), data["digest"], data["prior"])))
        return [label for _, label in sorted(found, key=lambda pair: pair[0])]

    def discard(self, lease_id: str) -> None:
        try:
            session = self._client.hget(self._owners_key, lease_id)
            if session is None:
                return
            name = session.decode() if isinstance(session, bytes) else session
            self._client.hdel(self._session_key(name), lease_id)
            self._client.hdel(self._owners_key, lease_id)
        except (redis.RedisError, OSError):
            logger.warning("could not drop the label of lease %s on Redis", lease_id, exc_info=True)

    def has_any(self, session: str) -> bool:
        try:
            return bool(self._client.exists(self._session_key(session)))
        except (redis.RedisError, OSError):
            logger.warning("could not read the reminder labels of %r on Redis", session, exc_info=True)
            return False
