"""Reminder labels kept in a SQLite store's database file, so another process recognises the
reminders of one that died (see :mod:`followups.ledger.labels`).

The labels live in their own table (``reminder_labels``, schema version 2) and are written on a
connection of their own, outside the ledger's transactions: a label is a hint for recognising a
reminder in a saved history, never part of a task's life. A failure to read or write one (the
database locked past its timeout, a full disk) is logged and degrades to what a store without
labels does: a reminder found in a reloaded history may be delivered once more, never lost.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path

from .labels import ReminderLabel

__all__ = ["SqliteReminderLabels"]

logger = logging.getLogger("followups.ledger.sqlite")

LABELS_TABLE = """
CREATE TABLE reminder_labels (
    lease_id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    digest TEXT NOT NULL,
    notification_ids TEXT NOT NULL,
    prior INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX reminder_labels_by_session ON reminder_labels (session, digest)
"""
"""The schema-version-2 migration that adds the table."""


class SqliteReminderLabels:
    """:class:`~followups.ledger.labels.ReminderLabels` in the ``reminder_labels`` table of the
    database at ``path``, shared by every process that opens it. At most ``max_labels`` per
    session: past it the oldest is dropped. Safe from any thread (one connection behind a
    lock); each call is one short statement or transaction and never raises."""

    def __init__(self, path: Path, *, busy_timeout: float, max_labels: int = 4096) -> None:
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise ValueError(f"max_labels must be a positive int, got {max_labels!r}")
        self.max_labels = max_labels
        self._path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)

    def add(self, label: ReminderLabel) -> None:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        "INSERT OR REPLACE INTO reminder_labels VALUES (?, ?, ?, ?, ?, ?)",
                        (label.lease_id, label.session, label.digest, json.dumps(list(label.notification_ids)),
                         label.prior, time.time()),
                    )
                    conn.execute(
                        "DELETE FROM reminder_labels WHERE session = ? AND lease_id NOT IN "
                        "(SELECT lease_id FROM reminder_labels WHERE session = ? ORDER BY added DESC LIMIT ?)",
                        (label.session, label.session, self.max_labels),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error:
                logger.warning("could not keep the label of lease %s in %s", label.lease_id, self._path, exc_info=True)

    def find(self, session: str, digests: Collection[str]) -> list[ReminderLabel]:
        wanted = set(digests)
        if not wanted:
            return []
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT lease_id, digest, notification_ids, prior FROM reminder_labels "
                    "WHERE session = ? ORDER BY added",
                    (session,),
                ).fetchall()
            except sqlite3.Error:
                logger.warning("could not read the reminder labels of %r in %s", session, self._path, exc_info=True)
                return []
        return [
            ReminderLabel(lease_id, session, tuple(json.loads(ids)), digest, prior)
            for lease_id, digest, ids, prior in rows
            if digest in wanted
        ]

    def discard(self, lease_id: str) -> None:
        with self._lock:
            try:
                self._conn.execute("DELETE FROM reminder_labels WHERE lease_id = ?", (lease_id,))
            except sqlite3.Error:
                logger.warning("could not drop the label of lease %s in %s", lease_id, self._path, exc_info=True)

    def has_any(self, session: str) -> bool:
        with self._lock:
            try:
                row = self._conn.execute("SELECT 1 FROM reminder_labels WHERE session = ? LIMIT 1", (session,)).fetchone()
            except sqlite3.Error:
                logger.warning("could not read the reminder labels of %r in %s", session, self._path, exc_info=True)
                return False
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
