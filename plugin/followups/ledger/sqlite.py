"""``SqliteBackend``: the ledger in a SQLite database file, durable across crashes and shared by
the processes of one host (see :mod:`followups.ledger.protocol` for the contract).

**How.** The backend keeps a mirror of the database in the objects of :class:`MemoryBackend`
and runs the reference backend's logic on it, so both backends share one meaning. Every
operation is one ``BEGIN IMMEDIATE`` transaction: it first reloads the mirror if another
connection committed since (``PRAGMA data_version``), then runs, then writes the rows it changed
and commits. A commit that fails (disk full, database locked past ``sqlite_busy_timeout_seconds``,
I/O error) is rolled back, the mirror is reloaded at the next operation, and the operation raises
:class:`BackendUnavailable`; shared code keeps a report it could not commit and retries it.

**Durability.** WAL mode with ``synchronous=NORMAL`` (``durability="normal"``) survives the
crash of a process (kill -9): every committed operation is kept. ``durability="full"`` sets
``synchronous=FULL``: a committed operation also survives a power loss or an operating-system
crash.

**Processes.** Each store that connects writes an *epoch* and holds an exclusive ``flock`` on
a per-epoch lock file next to the database for as long as it is connected. Recovery (on
connect, and :meth:`recover`) finishes as failed "orphaned" the live runs of every epoch whose
lock can be taken, which is only possible once its process stopped (or its store closed): a
live process is never orphaned by another. A watcher thread polls ``PRAGMA data_version`` every
``poll_interval`` seconds and turns other processes' commits into effects for this process's
listeners (wake-ups, cancels, starts, inbox reads, lifecycle events); backends of this process
on the same file are nudged at once.

Thread-safety: one connection, guarded by a lock; every method may be called from any thread.

**Blocking.** With ``synchronous=NORMAL`` an operation is a short local transaction (tens of
microseconds; ``benchmarks/sqlite_figures.py`` measures it), so async code calls it inline
(``blocking = False``). With ``FULL`` each commit waits for an fsync, and ``blocking`` is True:
async code runs operations in a worker thread.
"""

from __future__ import annotations

import builtins

import json
import logging
import operator
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # not POSIX: the store cannot tell a live process's epoch from a stopped one's
    fcntl = None  # type: ignore[assignment]

from ..state import BackgroundTask, LeaseInfo, RunRef, TaskFinished, TaskNotification, TaskRegistered, TaskState, TaskStatus
from .memory import MemoryBackend, _Entry, _Lease, _notification, _Run, _Session
from .protocol import BackendUnavailable, Effect, LedgerListener, RunAction, SessionCounts
from .sqlite_labels import LABELS_TABLE, SqliteReminderLabels

_T = TypeVar("_T")

__all__ = ["SCHEMA_VERSION", "SqliteBackend", "default_store_path", "sqlite_path"]

logger = logging.getLogger("followups.ledger.sqlite")

SCHEMA_VERSION = 2
"""The version of the database layout this module writes; older files are migrated on open."""

_LIVE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
_HEARTBEAT_SECONDS = 5.0
_RESERVE = 1024  # counter values reserved by one write of the meta row
_DEFAULT_POLL_SECONDS = 0.02

_SCHEMA_V1 = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    total_cap INTEGER
);
INSERT INTO meta VALUES (1, 0, 0, 0, NULL);
CREATE TABLE sessions (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    cap INTEGER,
    cleared_through INTEGER NOT NULL
);
CREATE TABLE runs (
    generation INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    task_id TEXT NOT NULL,
    session TEXT NOT NULL,
    status TEXT NOT NULL,
    text TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    parent TEXT,
    close_policy TEXT NOT NULL,
    epoch TEXT NOT NULL,
    capped INTEGER NOT NULL,
    has_inbox INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,
    progress_at REAL,
    cancel_by TEXT,
    cancel_reason TEXT NOT NULL,
    sealed INTEGER NOT NULL,
    digest TEXT,
    relay_path TEXT,
    version INTEGER NOT NULL,
    questions INTEGER NOT NULL,
    inbox TEXT NOT NULL,
    inbox_closed INTEGER NOT NULL,
    live_order INTEGER NOT NULL,
    finish_order INTEGER NOT NULL
);
CREATE UNIQUE INDEX runs_task ON runs (session, task_id);
CREATE UNIQUE INDEX runs_live_name ON runs (session, name)
    WHERE name IS NOT NULL AND status IN ('queued', 'running');
CREATE TABLE entries (
    session TEXT NOT NULL,
    generation INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    text TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    notification_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    lease_id TEXT,
    relay_path TEXT,
    PRIMARY KEY (session, generation, slot)
);
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    epoch TEXT NOT NULL,
    expired INTEGER NOT NULL,
    entries TEXT NOT NULL
);
CREATE TABLE epochs (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: LABELS_TABLE}
"""``_MIGRATIONS[n]`` takes a database from version ``n - 1`` to ``n`` (0 is an empty file)."""

_RUN_COLUMNS = (
    "generation, origin, task_id, session, status, text, description, kind, name, parent, close_policy, epoch, "
    "capped, has_inbox, created_at, started_at, finished_at, progress, progress_at, cancel_by, cancel_reason, "
    "sealed, digest, relay_path, version, questions, inbox, inbox_closed, live_order, finish_order"
)
_UPSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 30)}) ON CONFLICT (generation) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _RUN_COLUMNS.split(", ")[1:])
)
_UPSERT_ENTRY = (
    "INSERT OR REPLACE INTO entries (session, generation, slot, task_id, status, text, sequence, notification_id, "
    "kind, version, lease_id, relay_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_LEASE = "INSERT OR REPLACE INTO leases (id, expires_at, epoch, expired, entries) VALUES (?, ?, ?, ?, ?)"


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL
    (SQLAlchemy's convention). Raises ``ValueError`` naming the URL when it has no path."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ValueError(f"store URL {url!r} is not a sqlite:/// URL")
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"store URL {url!r} has no database path; use sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    path = rest[1:]
    if "?" in path or "#" in path:
        raise ValueError(f"store URL {url!r}: query strings and fragments are not supported")
    if "\x00" in path:
        raise ValueError(f"store URL {url!r} contains a NUL character")
    return Path(path).expanduser().absolute()


def default_store_path() -> Path:
    """The per-user database of a durable store: ``$XDG_STATE_HOME/followups/followups.db``,
    else ``~/.local/state/followups/followups.db``."""
    state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(state_home) if state_home and os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "followups" / "followups.db"


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700 directories, whatever the umask
    (directories that already exist are left as they are)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if it does not exist, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


# -- change tracking ----------------------------------------------------------------------------


class _Tracker:
    """What the current operation changed: objects whose fields were set, and keys added to or
    removed from the mirror's dicts. Only touched by the thread holding the backend's lock."""

    __slots__ = ("entries", "leases", "leases_touched", "on", "pending_touched", "runs", "runs_touched", "sessions")

    def __init__(self) -> None:
        self.on = False
        self.runs: dict[_Run, set[str]] = {}  # run -> the fields set
        self.entries: dict[_Entry, set[str]] = {}  # entry -> the fields set
        self.leases: set[_Lease] = set()
        self.sessions: set[_Session] = set()
        self.runs_touched: set[RunRef] = set()
        self.leases_touched: set[str] = set()
        self.pending_touched: set[tuple[str, Any]] = set()

    def clear(self) -> None:
        if self.runs:
            self.runs.clear()
        if self.entries:
            self.entries.clear()
        if self.leases:
            self.leases.clear()
        if self.sessions:
            self.sessions.clear()
        if self.runs_touched:
            self.runs_touched.clear()
        if self.leases_touched:
            self.leases_touched.clear()
        if self.pending_touched:
            self.pending_touched.clear()


class _TrackedDict(dict[Any, Any]):
    """A dict that notes each key set or removed (as ``(tag, key)`` or ``key``) in ``touched``."""

    __slots__ = ("tag", "touched", "tracker")

    def __init__(self, items: Iterable[tuple[Any, Any]], tracker: _Tracker, touched: set[Any], tag: str | None) -> None:
        super().__init__(items)
        self.tracker = tracker
        self.touched = touched
        self.tag = tag

    def _note(self, key: Any) -> None:
        if self.tracker.on:
            self.touched.add(key if self.tag is None else (self.tag, key))

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        if self.tracker.on:
            self.touched.add(key if self.tag is None else (self.tag, key))

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        if self.tracker.on:
            self.touched.add(key if self.tag is None else (self.tag, key))

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self._note(key)
        return dict.pop(self, key, *default)

    def clear(self) -> None:
        for key in self:
            self._note(key)
        dict.clear(self)


class _TrackedList(list[str]):
    __slots__ = ("owner", "tracker")

    def __init__(self, items: Iterable[str], owner: _Run, tracker: _Tracker) -> None:
        super().__init__(items)
        self.owner = owner
        self.tracker = tracker

    def append(self, item: str) -> None:
        list.append(self, item)
        if self.tracker.on:
            self.tracker.runs.setdefault(self.owner, set()).add("inbox")


class _Counter:
    """``next(counter)``: the next value of a persisted counter."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def __next__(self) -> int:
        self.value += 1
        return self.value


def _tracked_types(tracker: _Tracker, order: _Counter) -> tuple[type[_Run], type[_Entry], type[_Lease], type[_Session]]:
    """Subclasses of the mirror's classes that note in ``tracker`` every object whose fields
    are set (new objects included)."""
    setattr_ = object.__setattr__
    runs, entries, leases, sessions = tracker.runs, tracker.entries, tracker.leases, tracker.sessions

    def run_setattr(self: _Run, name: str, value: Any) -> None:
        if name == "inbox" and value is not None and type(value) is not _TrackedList:
            value = _TrackedList(value, self, tracker)
        setattr_(self, name, value)
        if tracker.on and name not in _DERIVED_RUN_FIELDS:
            fields = runs.get(self)
            if fields is None:
                runs[self] = {name}
            else:
                fields.add(name)

    def run_init(self: Any, *args: Any) -> None:
        _Run.__init__(self, *args)
        self.live_order = next(order)
        self.finish_order = 0

    def entry_setattr(self: _Entry, name: str, value: Any) -> None:
        setattr_(self, name, value)
        if tracker.on:
            fields = entries.get(self)
            if fields is None:
                entries[self] = {name}
            else:
                fields.add(name)

    def lease_setattr(self: _Lease, name: str, value: Any) -> None:
        setattr_(self, name, value)
        if tracker.on:
            leases.add(self)

    def session_setattr(self: _Session, name: str, value: Any) -> None:
        if name == "pending" and type(value) is not _TrackedDict:
            value = _TrackedDict(value.items(), tracker, tracker.pending_touched, self.name)
        setattr_(self, name, value)
        if tracker.on and name in _STORED_SESSION_FIELDS:
            sessions.add(self)

    def untracked_new(base: type[Any]) -> Any:
        # A new object is written whole (it is a new key of a tracked dict): build it as the
        # base class, without a hook per field, then give it the tracked class (same layout).
        def __new__(cls: type[Any], *args: Any) -> Any:
            obj = base(*args)
            obj.__class__ = cls
            return obj

        return __new__

    def no_init(self: Any, *args: Any) -> None:
        pass

    run_type = type(
        "_SqliteRun",
        (_Run,),
        {"__slots__": ("finish_order", "live_order"), "__setattr__": run_setattr, "__init__": run_init, "_tracker": tracker},
    )
    entry_type = type(
        "_SqliteEntry",
        (_Entry,),
        {"__slots__": (), "__setattr__": entry_setattr, "__new__": untracked_new(_Entry), "__init__": no_init},
    )
    lease_type = type(
        "_SqliteLease",
        (_Lease,),
        {"__slots__": (), "__setattr__": lease_setattr, "__new__": untracked_new(_Lease), "__init__": no_init},
    )
    session_type = type("_SqliteSession", (_Session,), {"__slots__": (), "__setattr__": session_setattr})
    return run_type, entry_type, lease_type, session_type


class _Transaction:
    """The backend's lock: entering begins an immediate transaction (reloading the mirror if
    another connection committed), leaving writes what changed and commits, or rolls back."""

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend
        self._mutex = threading.Lock()
        self.readers: set[int] = set()  # threads inside a read operation
        self._reading = False  # the current transaction's kind, set while the mutex is held

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            self._reading = reading = bool(self.readers) and threading.get_ident() in self.readers
            self._backend._begin(reading)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        backend = self._backend
        try:
            if exc_type is None:
                backend._commit(self._reading)
            else:
                backend._rollback()
        finally:
            external = backend._external
            if external:
                backend._external = []
            self._mutex.release()
        if external:
            backend._dispatch(external)

    # the raw lock, for the watcher and connect: no transaction of its own
    def acquire(self) -> None:
        self._mutex.acquire()

    def release(self) -> None:
        self._mutex.release()


# -- in-process neighbours --------------------------------------------------------------------------

_neighbours: dict[Path, weakref.WeakSet[SqliteBackend]] = {}
_neighbour_counts: dict[Path, int] = {}  # open backends by file, read without the lock
_neighbours_lock = threading.Lock()


def _nudge_neighbours(backend: SqliteBackend) -> None:
    with _neighbours_lock:
        others = [other for other in _neighbours.get(backend.path, ()) if other is not backend]
    for other in others:
        other._wake.set()


# -- the backend --------------------------------------------------------------------------------------


class SqliteBackend(MemoryBackend):
    """The ledger in a SQLite file: see the module docstring. ``path`` is the database file
    (created 0600, with missing directories 0700); ``busy_timeout`` is how long an operation
    waits for another connection's write lock before it fails; ``synchronous`` is ``NORMAL``
    or ``FULL``; ``poll_interval`` bounds how late another process's change is seen.
    ``reload_every_operation`` rebuilds the mirror from the file before every operation, so
    each one sees only what was committed (slow: a check for tests)."""

    blocking = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        poll_interval: float = _DEFAULT_POLL_SECONDS,
        reload_every_operation: bool = False,
    ) -> None:
        super().__init__()
        if fcntl is None:
            raise BackendUnavailable("a SQLite store needs fcntl.flock, which this platform lacks", where=f"sqlite:///{path}")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be at least 0 seconds, got {busy_timeout!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be more than 0 seconds, got {poll_interval!r}")
        self.path = Path(path).expanduser().absolute()
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout = busy_timeout
        self.blocking = synchronous.upper() == "FULL"
        self._poll_interval = poll_interval
        self._reload_always = reload_every_operation
        self._tracker = _Tracker()
        self._order = _Counter()
        self._run_type, self._entry_type, self._lease_type, self._session_type = _tracked_types(self._tracker, self._order)
        self._gen = _Counter()
        self._generations = self._gen  # type: ignore[assignment]  # the reference's counter, persisted
        self._tx = _Transaction(self)
        self._lock = self._tx  # type: ignore[assignment]  # every reference operation is a transaction
        self._external: list[Effect] = []
        self._stale = True
        self._data_version = -1
        self._meta: tuple[int, int, int, int | None] = (0, 0, 0, None)  # the counters last committed
        self._meta_row: tuple[int, int, int, int | None] = (0, 0, 0, None)  # what the meta row holds
        self._session_rows: dict[str, tuple[int | None, int]] = {}
        self._epoch_locks: dict[str, tuple[int, Path]] = {}
        self._closed = False
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._runs = _TrackedDict((), self._tracker, self._tracker.runs_touched, None)
        self._leases = _TrackedDict((), self._tracker, self._tracker.leases_touched, None)
        make_private_dirs(self.path.parent)
        _private_file(self.path)
        self._locks_dir = self.path.with_name(self.path.name + ".epochs")
        make_private_dirs(self._locks_dir)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"could not open the database: {exc}", where=self.url) from exc
        try:
            self._cursor = self._conn.cursor()  # one cursor for the statements of operations
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BackendUnavailable(f"could not switch {self.path} to WAL mode (got {mode!r})", where=self.url)
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._migrate()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise BackendUnavailable(f"could not open the database: {exc}", where=self.url) from exc
            raise
        self.reminder_labels = SqliteReminderLabels(self.path, busy_timeout=busy_timeout)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        with _neighbours_lock:
            _neighbours.setdefault(self.path, weakref.WeakSet()).add(self)
            _neighbour_counts[self.path] = _neighbour_counts.get(self.path, 0) + 1

    # -- schema -----------------------------------------------------------------------------------

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
            if exists is None:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version VALUES (0)")
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
            if version > SCHEMA_VERSION:
                raise BackendUnavailable(
                    f"the database has schema version {version}, newer than this followups supports ({SCHEMA_VERSION})",
                    where=self.url,
                )
            while version < SCHEMA_VERSION:
                version += 1
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- transactions -------------------------------------------------------------------------------

    def _fail(self, what: str, exc: sqlite3.Error) -> BackendUnavailable:
        return BackendUnavailable(f"{what} failed: {exc}", where=self.url)

    def _begin(self, reading: bool) -> None:
        if self._closed:
            raise BackendUnavailable("the backend is closed", where=self.url)
        execute = self._cursor.execute
        try:
            execute("BEGIN" if reading else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._fail("beginning a transaction", exc) from exc
        try:
            version = execute("PRAGMA data_version").fetchone()[0]
            if self._stale or self._reload_always or version != self._data_version:
                self._load()
                self._data_version = version
        except sqlite3.Error as exc:
            self._rollback()
            raise self._fail("reading the ledger", exc) from exc
        self._tracker.on = True  # cleared at the end of the last transaction

    def _commit(self, reading: bool) -> None:
        tracker = self._tracker
        tracker.on = False
        try:
            wrote = self._write()
            self._cursor.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if reading:  # what a read changed is derived (expired leases): the answer stands
                logger.debug("a read of %s could not record what it derived", self.url, exc_info=True)
                return
            raise self._fail("committing", exc) from exc
        finally:
            tracker.clear()
        if wrote and _neighbour_counts.get(self.path, 0) > 1:
            _nudge_neighbours(self)

    def _rollback(self) -> None:
        self._tracker.on = False
        self._tracker.clear()
        self._stale = True
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.warning("rolling back %s failed", self.url, exc_info=True)

    # -- writing what an operation changed -------------------------------------------------------------

    def _write(self) -> bool:
        tracker = self._tracker
        meta = (self._gen.value, self._sequence, self._order.value, self._total_cap)
        run_fields = tracker.runs
        entry_fields = tracker.entries
        touched = tracker.runs_touched
        pending_touched = tracker.pending_touched
        if not (
            run_fields or entry_fields or touched or pending_touched or tracker.leases or tracker.leases_touched
            or tracker.sessions
        ) and meta == self._meta:
            return False
        execute = self._cursor.execute
        runs = self._runs
        sessions = self._sessions
        if tracker.sessions:
            for changed in tracker.sessions:
                row = (changed.cap, changed.cleared_through)
                if self._session_rows.get(changed.name) != row:
                    execute(
                        "INSERT INTO sessions (name, cap, cleared_through) VALUES (?, ?, ?) ON CONFLICT (name) "
                        "DO UPDATE SET cap = excluded.cap, cleared_through = excluded.cleared_through",
                        (changed.name, *row),
                    )
                    self._session_rows[changed.name] = row
        if touched:
            for ref in touched:
                if ref not in runs:
                    execute("DELETE FROM runs WHERE generation = ?", (ref.generation,))
        if run_fields:
            if len(run_fields) == 1:
                updated: Iterable[tuple[_Run, set[str]]] = run_fields.items()
            else:  # finished runs first: a live name they held may now be another run's
                updated = sorted(run_fields.items(), key=_live_last)
            for run, fields in updated:
                if run.ref in touched or runs.get(run.ref) is not run:
                    continue
                key = frozenset(fields)
                sql = _run_sql_cache.get(key)
                if sql is None:
                    sql = _run_sql_cache[key] = _update_run_sql(_update_columns(key))
                if sql:
                    execute(sql, _run_values(run, _update_columns(key)))
        if touched:
            new = [runs[ref] for ref in touched if ref in runs]
            if new:
                new.sort(key=_run_live_last)
                for run in new:
                    execute(_UPSERT_RUN, _run_row(run))
        added: set[int] = set()
        if pending_touched:
            for name, key in pending_touched:
                session = sessions.get(name)
                entry = None if session is None else session.pending.get(key)
                if entry is None:
                    generation, slot = (key, 0) if type(key) is int else key
                    execute("DELETE FROM entries WHERE session = ? AND generation = ? AND slot = ?", (name, generation, slot))
                elif id(entry) not in added:
                    added.add(id(entry))
                    execute(_UPSERT_ENTRY, _entry_row(entry))
        if entry_fields:
            for entry, fields in entry_fields.items():
                if id(entry) in added:
                    continue
                session = sessions.get(entry.notification.session)
                if session is not None and session.pending.get(entry.generation if entry.slot == 0 else (entry.generation, entry.slot)) is entry:
                    columns = _entry_columns(frozenset(fields))
                    if columns:
                        execute(_update_entry_sql(columns), _entry_values(entry, columns))
        if tracker.leases or tracker.leases_touched:
            leases = self._leases
            for lease_id in tracker.leases_touched:
                if lease_id not in leases:
                    execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            changed_leases = {lease for lease in tracker.leases if leases.get(lease.id) is lease}
            changed_leases.update(leases[lease_id] for lease_id in tracker.leases_touched if lease_id in leases)
            for lease in changed_leases:
                execute(_UPSERT_LEASE, _lease_row(lease))
        # The meta row holds a ceiling for each counter, reserved a block at a time, so that a
        # transaction rarely has to write it: numbers are only compared, and gaps are harmless.
        reserved = self._meta_row
        if meta[0] > reserved[0] or meta[1] > reserved[1] or meta[2] > reserved[2] or meta[3] != reserved[3]:
            reserved = (
                reserved[0] if meta[0] <= reserved[0] else meta[0] + _RESERVE,
                reserved[1] if meta[1] <= reserved[1] else meta[1] + _RESERVE,
                reserved[2] if meta[2] <= reserved[2] else meta[2] + _RESERVE,
                meta[3],
            )
            execute("UPDATE meta SET generation = ?, sequence = ?, ord = ?, total_cap = ? WHERE id = 1", reserved)
            self._meta_row = reserved
        self._meta = meta
        return True

    # -- loading the mirror ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Rebuild the mirror from the database (inside a transaction), and queue for the
        listeners what changed since the last mirror."""
        conn = self._conn
        tracker = self._tracker
        tracker.on = False
        old_sessions, old_runs, was_stale = self._sessions, dict(self._runs), self._stale
        # counters continue from the reserved ceilings: a value below one may have been used
        self._meta_row = conn.execute("SELECT generation, sequence, ord, total_cap FROM meta WHERE id = 1").fetchone()
        generation, sequence, order, total_cap = self._meta_row
        self._gen.value = generation
        self._sequence = sequence
        self._order.value = order
        self._total_cap = total_cap
        self._meta = (generation, sequence, order, total_cap)
        sessions: dict[str, _Session] = {}
        self._session_rows = {}
        for name, cap, cleared in conn.execute("SELECT name, cap, cleared_through FROM sessions ORDER BY ord"):
            fresh = self._session_type(name)
            fresh.cap = cap
            fresh.cleared_through = cleared
            sessions[name] = fresh
            self._session_rows[name] = (cap, cleared)
        runs = _TrackedDict((), tracker, tracker.runs_touched, None)
        by_generation: dict[int, _Run] = {}
        live: list[_Run] = []
        finished: list[_Run] = []
        run_type = self._run_type
        for row in conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY generation"):
            run = _run_from_row(run_type, row)
            session = sessions.get(run.session)
            if session is None:
                session = sessions[run.session] = self._session_type(run.session)
            runs[run.ref] = run
            by_generation[run.ref.generation] = run
            session.records[run.task_id] = run
            if run.parent is not None:
                session.own_children().setdefault(run.parent, set()).add(run.task_id)
            (live if run.state.status in _LIVE else finished).append(run)
        live.sort(key=lambda run: run.live_order)  # type: ignore[attr-defined]
        for run in live:
            session = sessions[run.session]
            session.live[run.task_id] = None
            if run.name is not None:
                session.own_names()[run.name] = run.task_id
            if run.state.status is TaskStatus.QUEUED:
                session.queued += 1
                if run.capped:
                    session.capped_queued += 1
                    session.enqueue(run)
            else:
                session.running += 1
                if run.capped:
                    session.capped_running += 1
        finished.sort(key=lambda run: run.finish_order)  # type: ignore[attr-defined]
        for run in finished:
            sessions[run.session].own_finished()[run.task_id] = None
        leases = _TrackedDict((), tracker, tracker.leases_touched, None)
        lease_entries: dict[str, list[Any]] = {}
        for lease_id, expires_at, epoch, expired, encoded in conn.execute(
            "SELECT id, expires_at, epoch, expired, entries FROM leases"
        ):
            lease = self._lease_type(lease_id, [], expires_at, epoch)
            lease.expired = bool(expired)
            leases[lease_id] = lease
            lease_entries[lease_id] = json.loads(encoded)
        by_key: dict[tuple[str, Any], _Entry] = {}
        entry_type = self._entry_type
        for row in conn.execute(
            "SELECT session, generation, slot, task_id, status, text, sequence, notification_id, kind, version, "
            "lease_id, relay_path FROM entries ORDER BY sequence"
        ):
            name, gen, slot, task_id, status, text, seq, notification_id, kind, version, lease_id, relay_path = row
            notification = _notification(task_id, TaskState(TaskStatus(status), text), seq, notification_id, name, kind)
            owner = by_generation.get(gen)
            entry = entry_type(owner, slot, notification, version)
            entry.lease = None if lease_id is None else leases.get(lease_id)
            entry.relay_path = relay_path
            session = sessions.get(name)
            if session is None:
                session = sessions[name] = self._session_type(name)
            key = gen if slot == 0 else (gen, slot)
            session.own_pending()[key] = entry
            by_key[(name, key)] = entry
            if owner is not None:
                owner.pending_entries += 1
            if entry.available:
                session.available += 1
        for lease_id, items in lease_entries.items():
            lease = leases[lease_id]
            for name, gen, slot, version in items:
                key = gen if slot == 0 else (gen, slot)
                found = by_key.get((name, key))
                if found is None:
                    found = next((e for (_, k), e in by_key.items() if k == key), None)
                if found is None:  # deleted since: a stand-in that no longer takes part
                    placeholder = _notification("", TaskState.queued(), 0, f"{gen}.0", name, "result")
                    if name not in sessions:
                        sessions[name] = self._session_type(name)
                    found = entry_type(None, slot, placeholder, -1)
                lease.entries.append((found, version))
        self._sessions = sessions
        self._runs = runs
        self._leases = leases
        self._next_expiry = 0.0
        self._stale = False
        if old_runs or old_sessions:
            self._external.extend(self._changes(old_sessions, old_runs, was_stale))

    def _changes(self, old_sessions: dict[str, _Session], old_runs: dict[RunRef, _Run], was_stale: bool) -> list[Effect]:
        """What another connection changed, as effects for this process's listeners."""
        effects: list[Effect] = []
        empty = _Session("")
        for name, session in self._sessions.items():
            before = old_sessions.get(name, empty)
            if was_stale or _session_view(before) != _session_view(session):
                effects.append(session.changed)
        local = set(self._listeners)
        if not local:
            return effects
        for ref, before_run in old_runs.items():
            if before_run.epoch not in local or before_run.state.status not in _LIVE:
                continue
            now_run = self._runs.get(ref)
            if now_run is None or now_run.state.status not in _LIVE:
                reason = "" if now_run is None else now_run.cancel_reason or now_run.state.text
                effects.append(RunAction(before_run.epoch, ref, "cancel", reason or "cancelled"))
        wants = self._wants_events()
        for ref, run in self._runs.items():
            previous = old_runs.get(ref)
            if wants and previous is None:
                effects.append(TaskRegistered(self._task(run)))
            if run.epoch not in local or run.state.status not in _LIVE:
                continue
            if run.cancel_by is not None and (was_stale or previous is None or previous.cancel_by is None):
                effects.append(RunAction(run.epoch, ref, "cancel", run.cancel_reason))
            elif (
                previous is not None
                and previous.state.status is TaskStatus.QUEUED
                and run.state.status is TaskStatus.RUNNING
                and run.capped
            ):
                effects.append(RunAction(run.epoch, ref, "start"))
            if run.inbox and (previous is None or list(previous.inbox or ()) != list(run.inbox)):
                effects.append(RunAction(run.epoch, ref, "inbox"))
        if wants:
            for name, session in self._sessions.items():
                before = old_sessions.get(name, empty)
                for key, entry in session.pending.items():
                    old = before.pending.get(key)
                    if entry.slot == 0 and (old is None or old.version != entry.version):
                        kind = entry.run.kind if entry.run is not None else "subagent"
                        effects.append(TaskFinished(entry.notification, kind))
        return effects

    # -- reads: a deferred transaction, which a writer of another process does not block ---------------

    def _read(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        readers = self._tx.readers
        me = threading.get_ident()
        readers.add(me)
        try:
            return fn(*args, **kwargs)
        finally:
            readers.discard(me)

    def get(self, session: str, key: str) -> BackgroundTask | None:
        return self._read(super().get, session, key)

    def get_run(self, ref: RunRef) -> BackgroundTask | None:
        return self._read(super().get_run, ref)

    def current_ref(self, session: str, task_id: str) -> RunRef | None:
        return self._read(super().current_ref, session, task_id)

    def run_digest(self, ref: RunRef) -> str | None:
        return self._read(super().run_digest, ref)

    def list(self, session: str | None, *, status: TaskStatus | None = None, kind: str | None = None, parent: str | None = None) -> builtins.list[BackgroundTask]:
        return self._read(super().list, session, status=status, kind=kind, parent=parent)

    def counts(self, session: str, *, now: float) -> SessionCounts:
        return self._read(super().counts, session, now=now)

    def leases(self, session: str, *, now: float) -> builtins.list[LeaseInfo]:
        return self._read(super().leases, session, now=now)

    def pending(self, session: str, *, now: float) -> builtins.list[TaskNotification]:
        return self._read(super().pending, session, now=now)

    def sessions(self) -> builtins.list[str]:
        return self._read(super().sessions)

    def referenced_relay_paths(self) -> set[str]:
        return self._read(super().referenced_relay_paths)

    # -- the operations this backend adds to the reference's ----------------------------------------------

    def _retire(self, session: _Session, run: _Run, final: TaskState, effects: builtins.list[Effect], now: float, *, admit: bool = True, cascade: bool = True) -> None:
        run.finish_order = next(self._order)  # type: ignore[attr-defined]
        super()._retire(session, run, final, effects, now, admit=admit, cascade=cascade)

    def _move_run(self, source: _Session, target: _Session, run: _Run) -> None:
        super()._move_run(source, target, run)
        run.live_order = next(self._order)  # type: ignore[attr-defined]

    def connect(self, listener: LedgerListener, *, now: float) -> str:
        epoch = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        lock_path = self._locks_dir / f"{epoch}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO epochs (id, pid, host, started_at, last_seen) VALUES (?, ?, ?, ?, ?)",
                    (epoch, os.getpid(), socket.gethostname(), time.time(), time.time()),
                )
                self._set_listener(epoch, listener)
                self._epoch_locks[epoch] = (fd, lock_path)
        except BaseException:
            os.close(fd)
            lock_path.unlink(missing_ok=True)
            raise
        self.recover(now=now)
        self._start_watcher()
        return epoch

    def disconnect(self, epoch: str) -> None:
        held = self._epoch_locks.pop(epoch, None)
        if held is None:
            return
        try:
            with self._lock:
                self._set_listener(epoch, None)
                owns = self._conn.execute(
                    "SELECT 1 FROM runs WHERE epoch = ? AND status IN ('queued', 'running') LIMIT 1", (epoch,)
                ).fetchone()
                if owns is None:
                    self._conn.execute("DELETE FROM epochs WHERE id = ?", (epoch,))
                else:
                    self._conn.execute("UPDATE epochs SET last_seen = ? WHERE id = ?", (time.time(), epoch))
        except BackendUnavailable:
            self._set_listener(epoch, None)
            logger.warning("could not record that epoch %s of %s ended", epoch, self.url, exc_info=True)
        finally:
            fd, path = held
            path.unlink(missing_ok=True)
            os.close(fd)

    def close(self) -> None:
        if self._closed:
            return
        for epoch in list(self._epoch_locks):
            self.disconnect(epoch)
        self._closed = True
        self._wake.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)
        self._tx.acquire()
        try:
            self._listeners.clear()
            self._listening = ()
            self._conn.close()
            self.reminder_labels.close()
        finally:
            self._tx.release()
        with _neighbours_lock:
            group = _neighbours.get(self.path)
            if group is not None:
                group.discard(self)
                if not group:
                    del _neighbours[self.path]
            left = _neighbour_counts.get(self.path, 1) - 1
            if left > 0:
                _neighbour_counts[self.path] = left
            else:
                _neighbour_counts.pop(self.path, None)

    def recover(self, *, now: float) -> int:
        effects: builtins.list[Effect] = []
        orphaned = 0
        with self._lock:
            before = {name: session.available for name, session in self._sessions.items()}
            gone = self._gone_epochs()
            for lease in self._leases.values():
                if lease.epoch in gone and not lease.expired and lease.expires_at > now:
                    lease.expires_at = now  # its holder stopped: it can never be settled by it
                    self._next_expiry = 0.0
            self._expire(now)
            effects.extend(
                session.changed
                for name, session in self._sessions.items()
                if session.available != before.get(name, session.available)
            )
            if gone:
                orphaned = self._orphan(gone, now, effects)
        self._dispatch(effects)
        return orphaned

    def _gone_epochs(self) -> dict[str, str]:
        """The epochs of live runs whose process stopped, each with the reason to give."""
        conn = self._conn
        owners = {row[0] for row in conn.execute("SELECT DISTINCT epoch FROM runs WHERE status IN ('queued', 'running')")}
        owners.update(row[0] for row in conn.execute("SELECT DISTINCT epoch FROM leases WHERE expired = 0"))
        known = {row[0]: row[1:] for row in conn.execute("SELECT id, pid, last_seen FROM epochs")}
        gone: dict[str, str] = {}
        for epoch in owners | set(known):
            if epoch in self._epoch_locks:
                continue
            info = known.get(epoch)
            if info is not None and self._epoch_alive(epoch):
                continue
            if info is None:
                detail = "unknown process"
            else:
                pid, last_seen = info
                stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_seen))
                detail = f"pid {pid}, last seen {stamp}"
            gone[epoch] = f"orphaned: the process running it stopped ({detail})"
        if gone:
            conn.executemany("DELETE FROM epochs WHERE id = ?", [(epoch,) for epoch in gone])
            for epoch in gone:
                (self._locks_dir / f"{epoch}.lock").unlink(missing_ok=True)
                (self._locks_dir / f"{epoch}.unsaved.json").unlink(missing_ok=True)
        return gone

    def _epoch_alive(self, epoch: str) -> bool:
        """True while some process holds the epoch's lock file."""
        try:
            fd = os.open(self._locks_dir / f"{epoch}.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _orphan(self, gone: dict[str, str], now: float, effects: builtins.list[Effect]) -> int:
        targets = [run for run in self._runs.values() if run.state.status in _LIVE and run.epoch in gone]
        count = 0
        for run in targets:
            session = self._sessions[run.session]
            if run.state.status not in _LIVE or session.records.get(run.task_id) is not run:
                continue  # already finished by a cascade from another orphan
            reason = gone[run.epoch]
            if run.cancel_by is None:
                run.cancel_by = "orphaned"
                run.cancel_reason = reason
            self._retire(session, run, TaskState.failed(reason), effects, now)
            self._queue_result(session, run, effects)
            effects.append(session.changed)
            count += 1
        if count:
            logger.info("recovered %d task(s) orphaned by stopped processes in %s", count, self.url)
        return count

    # -- watching other processes -------------------------------------------------------------------------

    def _start_watcher(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = threading.Thread(target=self._watch, name="followups-sqlite-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self._poll()
            except Exception:
                logger.debug("watching %s failed; trying again", self.url, exc_info=True)

    def _poll(self) -> None:
        lock = self._tx
        effects: list[Effect] = []
        lock.acquire()
        try:
            if self._closed:
                return
            conn = self._conn
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if self._stale or version != self._data_version:
                conn.execute("BEGIN")
                try:
                    self._load()
                    self._data_version = version
                finally:
                    conn.execute("COMMIT")
            clock = time.time()
            if self._epoch_locks and clock - self._last_heartbeat >= _HEARTBEAT_SECONDS:
                self._last_heartbeat = clock
                try:
                    conn.execute(
                        f"UPDATE epochs SET last_seen = ? WHERE id IN ({', '.join('?' * len(self._epoch_locks))})",
                        (clock, *self._epoch_locks),
                    )
                except sqlite3.Error:
                    logger.debug("could not record that %s is alive", self.url, exc_info=True)
            effects, self._external = self._external, []
        finally:
            lock.release()
        if effects:
            self._dispatch(effects)

    # -- reports not yet committed, for other processes to see --------------------------------------------

    def note_unpersisted(self, epoch: str, errors: Mapping[RunRef, tuple[str, str]]) -> None:
        """Record, next to the database, the reports the store of ``epoch`` keeps in memory
        because it could not commit them: ``{ref: (status, error)}``, an empty mapping when it
        has none left. A small file write that works while the database is locked; best
        effort on a full disk. :meth:`unpersisted` reads it from any process."""
        path = self._locks_dir / f"{epoch}.unsaved.json"
        if not errors:
            path.unlink(missing_ok=True)
            return
        data = [
            {"session": ref.session, "task_id": ref.task_id, "generation": ref.generation, "status": status, "error": error}
            for ref, (status, error) in errors.items()
        ]
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def unpersisted(self) -> dict[tuple[str, str, int], tuple[str, str]]:
        """The reports live processes keep in memory uncommitted, by (origin session, task id,
        generation): ``(status, error)``."""
        found: dict[tuple[str, str, int], tuple[str, str]] = {}
        for path in self._locks_dir.glob("*.unsaved.json"):
            epoch = path.name.removesuffix(".unsaved.json")
            if epoch not in self._epoch_locks and not self._epoch_alive(epoch):
                continue
            try:
                items = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for item in items:
                found[(item["session"], item["task_id"], int(item["generation"]))] = (item["status"], item["error"])
        return found

    # -- maintenance helpers --------------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a sound database file."""
        lock = self._tx
        lock.acquire()
        try:
            return "\n".join(str(row[0]) for row in self._conn.execute("PRAGMA integrity_check"))
        finally:
            lock.release()


def _live_last(item: tuple[_Run, Any]) -> bool:
    return item[0].state.status in _LIVE


def _run_live_last(run: _Run) -> bool:
    return run.state.status in _LIVE


def _session_view(session: _Session) -> tuple[int, builtins.list[tuple[Any, int, bool]]]:
    return len(session.live), [(key, entry.version, entry.available) for key, entry in session.pending.items()]


def _run_row(run: _Run) -> tuple[Any, ...]:
    ref = run.ref
    state = run.state
    return (
        ref.generation, ref.session, ref.task_id, run.session, state.status.value, state.text, run.description,
        run.kind, run.name, run.parent, run.close_policy, run.epoch, int(run.capped), int(run.has_inbox),
        run.created_at, run.started_at, run.finished_at, run.progress, run.progress_at, run.cancel_by,
        run.cancel_reason, int(run.sealed), run.digest, run.relay_path, run.version, run.questions,
        _inbox_json(run), int(run.inbox_closed), run.live_order, run.finish_order,  # type: ignore[attr-defined]
    )


def _inbox_json(run: _Run) -> str:
    return json.dumps(list(run.inbox)) if run.inbox else "[]"


_DERIVED_RUN_FIELDS = frozenset({"pending_entries", "task_id"})
_STORED_SESSION_FIELDS = frozenset({"cap", "cleared_through"})
_RUN_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "state": ("status", "text"),
    "ref": (),
    "inbox": ("inbox",),
    **{
        name: (name,)
        for name in (
            "session", "description", "kind", "name", "parent", "close_policy", "epoch", "capped", "has_inbox",
            "created_at", "started_at", "finished_at", "progress", "progress_at", "cancel_by", "cancel_reason",
            "sealed", "digest", "relay_path", "version", "questions", "inbox_closed", "live_order", "finish_order",
        )
    },
}
_COLUMN_VALUE: dict[str, Callable[[Any], Any]] = {
    "status": lambda run: run.state.status.value,
    "text": lambda run: run.state.text,
    "inbox": _inbox_json,
    "capped": lambda run: int(run.capped),
    "has_inbox": lambda run: int(run.has_inbox),
    "sealed": lambda run: int(run.sealed),
    "inbox_closed": lambda run: int(run.inbox_closed),
}
_columns_cache: dict[frozenset[str], tuple[str, ...]] = {}
_sql_cache: dict[tuple[str, ...], str] = {}


def _update_columns(fields: frozenset[str]) -> tuple[str, ...]:
    columns = _columns_cache.get(fields)
    if columns is None:
        columns = tuple(sorted({column for field in fields for column in _RUN_FIELD_COLUMNS[field]}))
        _columns_cache[fields] = columns
    return columns


_run_sql_cache: dict[frozenset[str], str] = {}


def _update_run_sql(columns: tuple[str, ...]) -> str:
    """The UPDATE of these columns of a run ("" for none)."""
    if not columns:
        return ""
    sql = _sql_cache.get(columns)
    if sql is None:
        sql = f"UPDATE runs SET {', '.join(f'{c} = ?' for c in columns)} WHERE generation = ?"
        _sql_cache[columns] = sql
    return sql


_ENTRY_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "lease": ("lease_id",),
    "notification": ("task_id", "status", "text", "sequence", "notification_id", "kind"),
    "version": ("version",),
    "relay_path": ("relay_path",),
    "generation": (),
    "slot": (),
    "run": (),
}
_ENTRY_VALUE: dict[str, Callable[[Any], Any]] = {
    "lease_id": lambda entry: None if entry.lease is None else entry.lease.id,
    "task_id": lambda entry: entry.notification.id,
    "status": lambda entry: entry.notification.state.status.value,
    "text": lambda entry: entry.notification.state.text,
    "sequence": lambda entry: entry.notification.sequence,
    "notification_id": lambda entry: entry.notification.notification_id,
    "kind": lambda entry: entry.notification.kind,
    "version": operator.attrgetter("version"),
    "relay_path": operator.attrgetter("relay_path"),
}
_entry_columns_cache: dict[frozenset[str], tuple[str, ...]] = {}
_entry_sql_cache: dict[tuple[str, ...], str] = {}


def _entry_columns(fields: frozenset[str]) -> tuple[str, ...]:
    columns = _entry_columns_cache.get(fields)
    if columns is None:
        columns = tuple(sorted({column for field in fields for column in _ENTRY_FIELD_COLUMNS[field]}))
        _entry_columns_cache[fields] = columns
    return columns


def _update_entry_sql(columns: tuple[str, ...]) -> str:
    sql = _entry_sql_cache.get(columns)
    if sql is None:
        sql = (
            f"UPDATE entries SET {', '.join(f'{c} = ?' for c in columns)} "
            "WHERE session = ? AND generation = ? AND slot = ?"
        )
        _entry_sql_cache[columns] = sql
    return sql


def _entry_values(entry: _Entry, columns: tuple[str, ...]) -> tuple[Any, ...]:
    return (*(_ENTRY_VALUE[column](entry) for column in columns), entry.notification.session, entry.generation, entry.slot)


_getters_cache: dict[tuple[str, ...], tuple[Callable[[Any], Any], ...]] = {}


def _run_values(run: _Run, columns: tuple[str, ...]) -> list[Any]:
    getters = _getters_cache.get(columns)
    if getters is None:
        getters = tuple(_COLUMN_VALUE.get(column) or operator.attrgetter(column) for column in columns)
        _getters_cache[columns] = getters
    values = [getter(run) for getter in getters]
    values.append(run.ref.generation)
    return values


_RUN_FIELDS = (
    "session", "state", "description", "kind", "name", "parent", "close_policy", "epoch", "capped", "has_inbox",
    "created_at", "started_at", "finished_at", "progress", "progress_at", "cancel_by", "cancel_reason", "sealed",
    "digest", "relay_path", "version", "questions", "inbox", "inbox_closed", "live_order", "finish_order",
)


_STATES: dict[tuple[str, str], TaskState] = {}


def _state(status: str, text: str) -> TaskState:
    """A run's state from its columns; the states without a text are shared."""
    if text:
        return TaskState(TaskStatus(status), text)
    state = _STATES.get((status, text))
    if state is None:
        state = _STATES[(status, text)] = TaskState(TaskStatus(status), text)
    return state


def _run_from_row(run_type: type[_Run], row: tuple[Any, ...]) -> _Run:
    (generation, origin, task_id, session, status, text, description, kind, name, parent, close_policy, epoch,
     capped, has_inbox, created_at, started_at, finished_at, progress, progress_at, cancel_by, cancel_reason,
     sealed, digest, relay_path, version, questions, inbox, inbox_closed, live_order, finish_order) = row
    run = object.__new__(run_type)
    values = (
        session, _state(status, text), description, kind, name, parent, close_policy, epoch,
        bool(capped), bool(has_inbox), created_at, started_at, finished_at, progress, progress_at, cancel_by,
        cancel_reason, bool(sealed), digest, relay_path, version, questions,
        _TrackedList(json.loads(inbox), run, _tracker_of(run_type)) if inbox != "[]" else None, bool(inbox_closed),
        live_order, finish_order, RunRef(origin, task_id, generation), 0, task_id,
    )
    for setter, value in zip(_run_setters(run_type), values, strict=True):
        setter(run, value)  # the slots themselves: no change is noted while loading
    return run


def _run_setters(run_type: type[_Run]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of the fields a row fills, in ``_run_from_row``'s order (kept on the
    class, which belongs to one backend)."""
    setters: tuple[Callable[[Any, Any], None], ...] | None = vars(run_type).get("_setters")
    if setters is None:
        fields = (*_RUN_FIELDS, "ref", "pending_entries", "task_id")
        setters = tuple(_slot(run_type, field).__set__ for field in fields)
        type.__setattr__(run_type, "_setters", setters)
    return setters


def _slot(cls: type[Any], name: str) -> Any:
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    raise AttributeError(name)


def _tracker_of(run_type: type[_Run]) -> _Tracker:
    return run_type._tracker  # type: ignore[attr-defined,no-any-return]


def _entry_row(entry: _Entry) -> tuple[Any, ...]:
    notification: TaskNotification = entry.notification
    lease = entry.lease
    return (
        notification.session, entry.generation, entry.slot, notification.id, notification.state.status.value,
        notification.state.text, notification.sequence, notification.notification_id, notification.kind,
        entry.version, None if lease is None else lease.id, entry.relay_path,
    )


def _lease_row(lease: _Lease) -> tuple[Any, ...]:
    items = [[entry.notification.session, entry.generation, entry.slot, version] for entry, version in lease.entries]
    return (lease.id, lease.expires_at, lease.epoch, int(lease.expired), json.dumps(items))
