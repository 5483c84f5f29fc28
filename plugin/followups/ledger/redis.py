"""``RedisBackend``: the ledger on a Redis server, shared by any number of worker processes.

**Operations.** Every operation of :mod:`followups.ledger.protocol` is one Lua script
(:mod:`followups.ledger.redis_scripts`), run with ``EVALSHA`` (loaded again after a server
restart): no WATCH loop, nothing half done. A script reads its session's document,
changes it, writes it back and publishes what changed.

**Keys.** With prefix ``P`` (the URL's ``?prefix=``, default ``followups``):

* ``{P:SESSION}:s`` — the session's document: which run owns each task id, live and finish
  order, names, children, the capped queue, the order of pending notifications, leases,
  counters; ``{P:SESSION}:r`` and ``{P:SESSION}:p`` — hashes of its runs (by generation) and
  its pending notifications (by notification key), one JSON value each, read only when an
  operation needs them. Every per-session operation names only these three keys, which share a
  hash tag: each one lives in one Redis Cluster slot.
* ``{P}:generation`` — the counter that run generations are reserved from, in blocks
  (``INCRBY``, a one-key command); generations are unique in the store.
* ``{P}:sessions`` — the set of session names (``SADD`` before a session's first write).
* ``{P}:epoch:EPOCH`` — one per live worker, with a TTL (``worker_ttl_seconds``) its heartbeat
  refreshes; ``{P}:epochs`` (a hash) keeps each registered epoch's last heartbeat, so recovery
  can name when a dead worker was last seen.
* ``{P:SESSION}:x`` — the session's event log: a stream with one entry per operation that had
  effects (trimmed to about ``event_stream_length`` entries, ``XADD MAXLEN ~``), each numbered
  with the count of lifecycle events logged so far. Scripts name it as their last key.
* ``{P}:fx`` — the pub/sub channel every script publishes its effects on (with the log
  entry's id and number).
* ``{P}:total``, ``{P}:total-waiting``, ``{P}:total-reserved`` — the store-wide cap's count,
  the sessions waiting for it and its unsettled reservations (token → epoch and session).

:meth:`RedisBackend.transfer` is the one operation that spans two sessions: its script names
both sessions' keys, which a single server and a cluster whose two keys share a node serve.
On Redis Cluster, keep sessions that hand work to each other on one slot by naming them with
a common ``{tag}`` prefix (``{conv-42}main``, ``{conv-42}next``): the hash tag of
``{P:{conv-42}main}:s`` is then ``P:{conv-42``, the same for both.

**Workers.** :meth:`connect` registers an epoch; a heartbeat thread refreshes it every
third of the TTL and runs a recovery pass: the live runs of an epoch whose key expired are
finished failed ``"orphaned: worker W stopped (last heartbeat …)"`` (or cancelled, if a
cancel was requested), each in its session's script, so several workers recovering at once
orphan each run exactly once.

**Wake-ups.** A listener thread subscribes to ``{P}:fx`` and hands the effects of other
processes' operations (published with their origin) to this process's listeners: waiters wake
on another worker's finish, and a cancel for a run this process owns is carried out here. When
its connection drops, it reconnects with backoff and first reads each session's event log from
the last entry it saw: missed effects are handed on, and where the log was trimmed past that
point the listeners are told how many events are gone (subscribers see ``Lagged``).

Thread-safe: redis-py's connection pool serves concurrent calls. A server that cannot be
reached or does not answer in ``redis_timeout_seconds`` raises
:class:`~followups.ledger.BackendUnavailable` naming host and port.
"""

from __future__ import annotations

import builtins

import json
import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import (
    InboxClosed,
    InboxFull,
    NameInUse,
    NoInbox,
    PendingLimitReached,
    TaskAlreadyFinished,
    TaskIdInUse,
    TransferConflict,
    UnknownTask,
)
from ..state import (
    BackgroundTask,
    CancelledBy,
    LeaseInfo,
    RunRef,
    TaskNotification,
    TaskState,
    TaskStatus,
)
from .codec import decode_effect, decode_notification, decode_state, encode_notification
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
    LedgerListener,
    Selection,
    SessionCounts,
)
from .redis_scripts import OPERATIONS, TOTAL_SCRIPTS, script_source

try:
    import redis as _redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the extra
    _redis = None  # type: ignore[assignment]

__all__ = ["RedisBackend", "parse_redis_url"]

logger = logging.getLogger("followups.ledger.redis")

_GENERATION_BLOCK = 64
_MAX_HOPS = 32
_TIME_FIELDS = ("created_at", "started_at", "finished_at", "progress_at")


def parse_redis_url(url: str) -> tuple[str, str]:
    """Split ``redis://host:port/db?prefix=P`` into the URL redis-py takes and the key prefix.
    Raises ``ValueError`` naming the URL for an option it does not know or a bad prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"store URL {url!r}: not a redis:// or rediss:// URL")
    options = parse_qs(parts.query, keep_blank_values=True)
    prefix = "followups"
    rest: list[str] = []
    for key, values in options.items():
        if key == "prefix":
            prefix = values[-1]
            if not prefix or any(c in prefix for c in "{}") or not prefix.isprintable():
                raise ValueError(f"store URL {url!r}: the prefix must be non-empty, printable and without braces")
        else:
            rest.extend(f"{key}={value}" for value in values)
    client_url = parts._replace(query="&".join(rest)).geturl()
    return client_url, prefix


def _t(value: float) -> str:
    return repr(float(value))


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def _task(data: dict[str, Any]) -> BackgroundTask:
    return BackgroundTask(
        id=data["id"],
        state=decode_state(data["state"]),
        description=data.get("description", ""),
        session=data["session"],
        kind=data["kind"],
        name=data.get("name"),
        parent=data.get("parent"),
        generation=int(data["generation"]),
        created_at=float(data["created_at"]),
        started_at=_time(data.get("started_at")),
        finished_at=_time(data.get("finished_at")),
        progress=data.get("progress"),
        progress_at=_time(data.get("progress_at")),
        cancel_requested_by=data.get("cancel_requested_by"),
        close_policy=data.get("close_policy", "cancel"),
        relay_path=data.get("relay_path"),
        origin_session=data.get("origin_session"),
    )


def _fix_effect_times(items: list[dict[str, Any]]) -> None:
    for item in items:
        task = item.get("task")
        if task is not None:
            for name in _TIME_FIELDS:
                if task.get(name) is not None:
                    task[name] = float(task[name])
            task["generation"] = int(task["generation"])
        if item.get("type") == "progress":
            item["at"] = float(item["at"])


def _effects(text: bytes | str) -> builtins.list[Effect]:
    if text in (b"[]", "[]", b"{}", "{}"):
        return []
    items = json.loads(text)
    _fix_effect_times(items)
    return [decode_effect(item) for item in items]


def _list(value: Any) -> builtins.list[Any]:
    """A JSON array from Lua: an empty one arrives as ``{}``."""
    return value if isinstance(value, list) else []


def _notification(data: dict[str, Any]) -> TaskNotification:
    return decode_notification(data)


class RedisBackend:
    """The ledger on Redis: see :mod:`followups.ledger.protocol` for the contract and this
    module's docstring for the key layout, workers and wake-ups.

    ``url`` is ``redis://[user:password@]host:port/db`` or ``rediss://…`` with an optional
    ``?prefix=`` (the key prefix, default ``followups``). Thread-safe; :meth:`close` stops its
    threads and closes its connections.
    """

    blocking = False
    """Calls run inline, also on an event loop: each is one round trip (tens of microseconds on
    a local network, less than a hop to a worker thread), so a loop's tasks see the ledger's
    changes in the order they make them. While the server does not answer, a call waits up to
    ``redis_timeout_seconds`` and then fails as unavailable."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        worker_ttl_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        event_stream_length: int = 1000,
    ) -> None:
        if _redis is None:
            raise ImportError("the Redis backend needs the redis package: pip install 'followups[redis]'")
        if worker_ttl_seconds <= 0:
            raise ValueError(f"worker_ttl_seconds must be positive, got {worker_ttl_seconds!r}")
        if isinstance(event_stream_length, bool) or not isinstance(event_stream_length, int) or event_stream_length < 1:
            raise ValueError(f"event_stream_length must be a positive number of events, got {event_stream_length!r}")
        self.event_stream_length = event_stream_length
        client_url, url_prefix = parse_redis_url(url)
        self.prefix = prefix if prefix is not None else url_prefix
        self.url = url
        self.worker_ttl_seconds = float(worker_ttl_seconds)
        self._client = _redis.Redis.from_url(
            client_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        # the listener's own client does not reconnect behind its back: the listener does, and
        # then reads what it missed from the event logs
        self._watch_client = _redis.Redis.from_url(
            client_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        kwargs = self._client.connection_pool.connection_kwargs
        self.where = f"redis at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        self._scripts = {name: self._client.register_script(script_source(name)) for name in OPERATIONS}
        self._total_scripts = {name: self._client.register_script(src) for name, src in TOTAL_SCRIPTS.items()}
        self._total_cap: int | None = None
        self._origin = uuid.uuid4().hex
        self._channel = f"{{{self.prefix}}}:fx"
        self._lock = threading.Lock()
        self._listeners: dict[str, LedgerListener] = {}
        self._epoch_started: dict[str, float] = {}
        self._generations: list[int] = []
        self._known_sessions: set[str] = set()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._pubsub_ready = threading.Event()
        self._call_hook: Any = None  # tests: called with (operation, keys) before each script
        self._watch_gate = threading.Event()  # tests: cleared, the watcher stays away after a loss
        self._watch_gate.set()
        # the newest entry seen of each session's event log: log key -> (entry id, number)
        self._seen: dict[str, tuple[str, int]] = {}
        self._watermark = "0-0"  # the newest entry id seen on any log (ids share the server clock)
        from .redis_labels import RedisReminderLabels  # imports redis, which this module does only if present

        self.reminder_labels = RedisReminderLabels(self._client, self.prefix)

    # -- keys -----------------------------------------------------------------------------------

    def session_key(self, session: str) -> str:
        return f"{{{self.prefix}:{session}}}:s"

    def event_log_key(self, session: str) -> str:
        """The stream of ``session``'s events (bounded by ``event_stream_length``)."""
        return f"{{{self.prefix}:{session}}}:x"

    def session_keys(self, session: str) -> list[str]:
        """The keys of ``session``: its document, its runs, its pending notifications."""
        tag = f"{{{self.prefix}:{session}}}"
        return [f"{tag}:s", f"{tag}:r", f"{tag}:p"]

    def _epoch_key(self, epoch: str) -> str:
        return f"{{{self.prefix}}}:epoch:{epoch}"

    @property
    def _epochs_key(self) -> str:
        return f"{{{self.prefix}}}:epochs"

    @property
    def _sessions_key(self) -> str:
        return f"{{{self.prefix}}}:sessions"

    @property
    def _total_keys(self) -> list[str]:
        return [f"{{{self.prefix}}}:total", f"{{{self.prefix}}}:total-waiting", f"{{{self.prefix}}}:total-reserved"]

    @property
    def _generation_key(self) -> str:
        return f"{{{self.prefix}}}:generation"

    # -- plumbing -------------------------------------------------------------------------------

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"{type(exc).__name__}: {exc}", where=self.where)

    def _command(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _run(
        self, operation: str, keys: Sequence[str], request: dict[str, Any], *, give_back: bool = True
    ) -> dict[str, Any]:
        """Run ``operation``'s script; dispatch its effects here; give back the store-wide
        slots it freed (unless ``give_back`` is false: the caller does); return its result."""
        names = [*keys, keys[0][:-2] + ":x"]  # the first session's event log last
        hook = self._call_hook
        if hook is not None:
            hook(operation, names)
        args: list[str | int] = [
            self._channel,
            self._origin,
            json.dumps(request, separators=(",", ":"), ensure_ascii=False),
            self.event_stream_length,
        ]
        try:
            reply = self._scripts[operation](keys=names, args=args)
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        result: dict[str, Any] = json.loads(reply[0])
        effects = _effects(reply[1])
        if effects:
            self._dispatch(effects)
        freed = result.get("freed_total")
        if freed and give_back:
            self._release_total(int(freed))
        return result

    def _dispatch(self, effects: builtins.list[Effect]) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
        for listener in listeners:
            try:
                listener.apply(effects)
            except Exception:
                logger.exception("a ledger listener failed on %d effects", len(effects))

    def _session_run(
        self, operation: str, session: str, request: dict[str, Any], *, give_back: bool = True
    ) -> dict[str, Any]:
        request["session"] = session
        return self._run(operation, self.session_keys(session), request, give_back=give_back)

    def _ref_run(self, operation: str, ref: RunRef, request: dict[str, Any]) -> dict[str, Any]:
        """Run a script on the session where ``ref``'s run lives, following its transfers."""
        request["ref"] = [ref.session, ref.task_id, ref.generation]
        session = ref.session
        for _ in range(_MAX_HOPS):
            result = self._run(operation, self.session_keys(session), request)
            moved = result.get("moved")
            if moved is None:
                return result
            session = moved
        raise RuntimeError(f"run {ref!r} moved more than {_MAX_HOPS} times")

    def _note_session(self, session: str) -> None:
        if session not in self._known_sessions:
            self._command(self._client.sadd, self._sessions_key, session)
            self._known_sessions.add(session)

    def _generation(self) -> int:
        with self._lock:
            if not self._generations:
                top = int(self._command(self._client.incrby, self._generation_key, _GENERATION_BLOCK))
                self._generations = list(range(top, top - _GENERATION_BLOCK, -1))
            return self._generations.pop()

    def _all_sessions(self) -> builtins.list[str]:
        names = self._command(self._client.smembers, self._sessions_key)
        return sorted(name.decode() for name in names)

    # -- connection -----------------------------------------------------------------------------

    def connect(self, listener: LedgerListener, *, now: float) -> str:
        epoch = f"redis-{uuid.uuid4().hex[:16]}"
        self._beat([epoch])
        with self._lock:
            self._listeners[epoch] = listener
            self._epoch_started[epoch] = now
            start = self._watcher is None
            if start:
                self._watcher = threading.Thread(target=self._watch, name="followups-redis-watch", daemon=True)
                self._heartbeat = threading.Thread(target=self._beat_loop, name="followups-redis-heartbeat", daemon=True)
        if start:
            assert self._watcher is not None and self._heartbeat is not None
            self._watcher.start()
            self._heartbeat.start()
            self._pubsub_ready.wait(self.worker_ttl_seconds)
        return epoch

    def disconnect(self, epoch: str) -> None:
        with self._lock:
            self._listeners.pop(epoch, None)
            self._epoch_started.pop(epoch, None)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:  # wakes the listener thread at once
            self._client.publish(self._channel, self._origin + "\n")
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            logger.debug("could not wake the listener thread (%s); it stops within its poll interval", exc)
        with self._lock:
            self._listeners.clear()
            threads = [t for t in (self._watcher, self._heartbeat) if t is not None]
        for thread in threads:
            thread.join(timeout=5)
        self._client.close()
        self._watch_client.close()

    def _beat(self, epochs: Sequence[str]) -> None:
        """Refresh the epoch keys of ``epochs`` and record their heartbeat."""
        if not epochs:
            return
        ttl_ms = max(1, int(self.worker_ttl_seconds * 1000))
        now = time.time()
        try:
            pipe = self._client.pipeline(transaction=False)
            for epoch in epochs:
                pipe.set(self._epoch_key(epoch), _t(now), px=ttl_ms)
            pipe.hset(self._epochs_key, mapping={epoch: _t(now) for epoch in epochs})
            pipe.execute()
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _beat_loop(self) -> None:
        interval = self.worker_ttl_seconds / 3
        while not self._closed.wait(interval):
            with self._lock:
                epochs = list(self._listeners)
            try:
                self._beat(epochs)
                self._recover_dead(time.time())
            except BackendUnavailable as exc:
                logger.warning("redis heartbeat failed (%s); retrying", exc)
            except Exception:
                logger.exception("redis heartbeat failed")

    def _watch(self) -> None:
        """The listener thread: effects of other processes' operations, to our listeners."""
        delay = 0.05
        while not self._closed.is_set():
            pubsub = self._watch_client.pubsub()  # type: ignore[no-untyped-call]  # untyped in redis-py
            try:
                pubsub.subscribe(self._channel)
                # the subscription is live once the server confirms it
                while not self._closed.is_set():
                    message = pubsub.get_message(ignore_subscribe_messages=False, timeout=0.2)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if self._pubsub_ready.is_set():  # back after a lost connection
                            self._catch_up()
                            self._resync()
                        else:
                            self._watermark = self._server_now()
                        self._pubsub_ready.set()
                        delay = 0.05
                        continue
                    if message["type"] != "message":
                        continue
                    origin, _, rest = bytes(message["data"]).partition(b"\n")
                    header, _, payload = rest.partition(b"\n")
                    if not payload:
                        continue  # a close's wake-up
                    try:
                        log, entry_id, number = header.decode().split(" ")
                        fresh = self._note_seen(log, entry_id, int(number))
                        if not fresh or origin.decode() == self._origin:
                            continue  # caught up already, or our own effects (dispatched already)
                        effects = _effects(payload)
                    except (ValueError, KeyError):
                        logger.warning("ignoring a malformed effects message on %s", self._channel)
                        continue
                    self._dispatch(effects)
            except (_redis.ConnectionError, _redis.TimeoutError, OSError) as exc:
                logger.debug("redis watcher lost its connection (%s); reconnecting", exc)
                self._closed.wait(delay)
                delay = min(delay * 2, 2.0)
                while not self._watch_gate.wait(0.05) and not self._closed.is_set():
                    continue
            finally:
                try:
                    pubsub.close()
                except (_redis.ConnectionError, OSError) as exc:
                    logger.debug("closing a lost pub/sub connection: %s", exc)

    def _server_now(self) -> str:
        """The server's clock as an event log id: entries after it are newer than now."""
        try:
            seconds, micros = self._command(self._client.time)
        except BackendUnavailable:
            return self._watermark
        return f"{int(seconds) * 1000 + int(micros) // 1000}-0"

    def _note_seen(self, log: str, entry_id: str, number: int) -> bool:
        """Record entry ``entry_id`` of ``log`` (its events so far: ``number``) as seen; False
        if it (or a later one) was already."""
        last = self._seen.get(log)
        if last is not None and not _id_after(entry_id, last[0]):
            return False
        self._seen[log] = (entry_id, number)
        if _id_after(entry_id, self._watermark):
            self._watermark = entry_id
        return True

    def _catch_up(self) -> None:
        """Hand on the events other processes logged while the listener was away, from each
        session's event log; where a log was trimmed past what this process had seen, tell the
        listeners how many events of that session are lost (subscribers see ``Lagged``)."""
        with self._lock:
            listeners = list(self._listeners.values())
        if not listeners:
            return
        try:
            sessions = self._all_sessions()
            pipe = self._client.pipeline(transaction=False)
            starts = []
            for session in sessions:
                log = self.event_log_key(session)
                last = self._seen.get(log)
                start = f"({last[0]}" if last is not None else f"({self._watermark}"
                starts.append((session, log, last))
                pipe.xrange(log, start, "+")
            found = self._command(pipe.execute)
        except BackendUnavailable as exc:
            logger.warning("could not read the event logs after the listener reconnected (%s)", exc)
            return
        for (session, log, last), entries in zip(starts, found, strict=True):
            if not entries:
                continue
            head = entries[0][1]
            lost = 0 if last is None else int(head[b"n"]) - int(head[b"c"]) - last[1]
            if lost > 0:
                for listener in listeners:
                    missed = getattr(listener, "missed", None)
                    if missed is not None:
                        missed(session, lost)
            for entry_id, fields in entries:
                if not self._note_seen(log, entry_id.decode(), int(fields[b"n"])):
                    continue
                if fields[b"o"].decode() == self._origin:
                    continue
                try:
                    effects = _effects(fields[b"fx"])
                except (ValueError, KeyError):
                    logger.warning("ignoring a malformed entry %s of %s", entry_id, log)
                    continue
                self._dispatch(effects)

    def _resync(self) -> None:
        """Carry out what this process's runs may have been owed while the listener was away,
        and wake every waiter to look again (effects published meanwhile were missed)."""
        with self._lock:
            epochs = list(self._listeners)
        if not epochs:
            return
        try:
            for session in self._all_sessions():
                self._session_run("resync", session, {"epochs": epochs, "quiet": True})
        except BackendUnavailable as exc:
            logger.warning("could not catch up after the listener reconnected (%s)", exc)

    # -- runs -----------------------------------------------------------------------------------

    # -- the store-wide cap ------------------------------------------------------------------------

    def _total(self, operation: str, keys: list[str], args: list[Any]) -> Any:
        hook = self._call_hook
        if hook is not None:
            hook(f"total_{operation}", keys)
        try:
            return self._total_scripts[operation](keys=keys, args=args)
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _acquire_total(self, cap: int, epoch: str | None, session: str) -> tuple[bool, int, str]:
        """Reserve a store-wide slot for a run of ``session``: (granted, running, token). The
        reservation names ``epoch`` (the worker making it), so that if the worker dies before
        its session's script takes the slot, a recovery pass gives the slot back."""
        token = uuid.uuid4().hex[:16] if epoch is not None else ""
        keys = [self._total_keys[0], self._total_keys[2]]
        granted, running = self._total("acquire", keys, [cap, token, f"{epoch}\t{session}"])
        return bool(granted), int(running), token if granted else ""

    def _settle_total(self, token: str, freed: int, *, done_with: str = "") -> None:
        """After the script a reservation was for: give back ``freed`` slots and forget the
        reservation in one step (so recovery never gives its slot back a second time)."""
        if freed or done_with:
            self._release_total(freed, done_with=done_with, token=token)
        elif token:
            self._command(self._client.hdel, self._total_keys[2], token)

    def _reserving_epoch(self) -> str | None:
        with self._lock:
            return next(iter(self._listeners), None)

    def _release_total(self, count: int, *, done_with: str = "", token: str = "") -> None:
        """Give ``count`` store-wide slots back (settling reservation ``token``, if given), then
        hand each free one to a session whose queued runs wait for the store-wide cap (the one
        that frees a slot admits from whichever session waits, as the memory backend does)."""
        stored_cap, members = self._total("release", self._total_keys, [count, done_with, token])
        waiting = [name.decode() for name in members]
        cap = self._total_cap if self._total_cap is not None else (int(stored_cap) if stored_cap else None)
        if cap is None:
            return
        for session in waiting:
            granted, _, reserved = self._acquire_total(cap, self._reserving_epoch(), session)
            if not granted:
                return
            result = self._session_run("admit", session, {"total_token": reserved or None})
            if not result["admitted"]:
                self._settle_total(reserved, 1, done_with=session)
                return
            self._settle_total(reserved, 0)

    def create(self, request: CreateRequest) -> Admission:
        self._note_session(request.session)
        total_slot = 0
        total_running = 0
        token = ""
        if request.max_running is not None and request.max_running_total is not None:
            self._total_cap = request.max_running_total
            granted, total_running, token = self._acquire_total(
                request.max_running_total, request.epoch, request.session
            )
            total_slot = 1 if granted else 0
        try:
            result = self._create(request, total_slot, total_running, token)
        except BaseException:
            if total_slot:
                self._settle_total(token, 1)
            raise
        freed = int(result.get("freed_total") or 0)
        if result.get("err") is not None and total_slot:
            freed += 1  # the reserved slot, unused
        if total_slot:
            self._settle_total(token, freed)
        elif freed:
            self._release_total(freed)
        if result.get("waits_total"):
            self._total("wait", self._total_keys, [request.session])
            self._release_total(0)  # a slot freed before the session was listed as waiting
        return self._admission(request, result)

    def _create(self, request: CreateRequest, total_slot: int, total_running: int, token: str) -> dict[str, Any]:
        return self._session_run(
            "create",
            request.session,
            {
                "task_id": request.task_id,
                "epoch": request.epoch,
                "now": _t(request.now),
                "capacity": request.capacity,
                "max_pending": request.max_pending,
                "description": request.description,
                "kind": request.kind,
                "name": request.name,
                "parent": request.parent,
                "close_policy": request.close_policy,
                "if_exists": request.if_exists,
                "max_running": request.max_running,
                "when_full": request.when_full,
                "max_queued": request.max_queued,
                "queued": request.queued,
                "has_inbox": request.has_inbox,
                "generation": self._generation(),
                "max_running_total": request.max_running_total if request.max_running is not None else None,
                "total_slot": total_slot,
                "total_running": total_running,
                "total_token": token or None,
            },
            give_back=False,
        )

    def _admission(self, request: CreateRequest, result: dict[str, Any]) -> Admission:
        error = result.get("err")
        if error == "task_id_in_use":
            raise TaskIdInUse(result["task_id"], status=result["status"])
        if error == "name_in_use":
            raise NameInUse(result["name"], task_id=result["task_id"])
        if error == "pending_limit":
            raise PendingLimitReached(pending=result["pending"], limit=result["limit"])
        if error == "admission":
            raise AdmissionRefused(result["reason"], running=result["running"], queued=result["queued"])
        evicted = result.get("evicted")
        if evicted is not None:
            logger.warning(
                "session %r is full of live tasks: evicted live task %r; its result will be lost", request.session, evicted
            )
        ref = result["ref"]
        return Admission(RunRef(ref[0], ref[1], int(ref[2])), TaskStatus(result["status"]))

    def start(self, ref: RunRef, *, now: float) -> bool:
        return bool(self._ref_run("start", ref, {"now": _t(now)})["ok"])

    def progress(self, ref: RunRef, message: str, *, now: float) -> bool:
        return bool(self._ref_run("progress", ref, {"message": message, "now": _t(now)})["ok"])

    def finish(self, ref: RunRef, report: FinishReport) -> bool:
        state = report.state
        request = {
            "state": [state.status.value, state.text],
            "digest": report.digest,
            "now": _t(report.now),
            "relay_path": report.relay_path,
        }
        return bool(self._ref_run("finish", ref, request)["ok"])

    def request_cancel(
        self, session: str, selection: Selection, *, by: CancelledBy, reason: str, now: float
    ) -> CancelReport:
        result = self._session_run(
            "request_cancel",
            session,
            {
                "selection": {
                    "ids": None if selection.ids is None else list(selection.ids),
                    "tree": selection.tree,
                    "descendants_only": selection.descendants_only,
                    "kind": selection.kind,
                    "close_policy": selection.close_policy,
                    "keep": sorted(selection.keep),
                },
                "by": by,
                "reason": reason,
                "now": _t(now),
            },
        )
        return CancelReport(
            tuple(_list(result["requested"])),
            tuple((key, TaskStatus(status)) for key, status in _list(result["not_live"])),
            tuple(_list(result["unknown"])),
        )

    def cancel_all(self, session: str, *, reason: str, now: float) -> builtins.list[str]:
        result = self._session_run("cancel_all", session, {"reason": reason, "now": _t(now)})
        return _list(result["ids"])

    def transfer(self, from_session: str, to_session: str, task_ids: Sequence[str] | None, *, now: float) -> builtins.list[str]:
        if from_session == to_session:
            return []
        self._note_session(to_session)
        request = {
            "from_session": from_session,
            "to_session": to_session,
            "task_ids": None if task_ids is None else list(task_ids),
            "now": _t(now),
        }
        result = self._run("transfer", self.session_keys(from_session) + self.session_keys(to_session), request)
        if result.get("err") == "transfer_conflict":
            raise TransferConflict(to_session, ids=_list(result["ids"]), names=_list(result["names"]))
        return _list(result["ids"])

    # -- inbox and questions ----------------------------------------------------------------------

    def send(self, session: str, target: str, message: str, *, now: float, max_messages: int) -> RunRef:
        result = self._session_run(
            "send", session, {"target": target, "message": message, "now": _t(now), "max_messages": max_messages}
        )
        error = result.get("err")
        if error == "unknown_task":
            raise UnknownTask(target)
        if error == "already_finished":
            raise TaskAlreadyFinished(target, status=result["status"])
        if error == "no_inbox":
            raise NoInbox(target)
        if error == "inbox_closed":
            raise InboxClosed(target)
        if error == "inbox_full":
            raise InboxFull(target, limit=result["limit"])
        ref = result["ref"]
        return RunRef(ref[0], ref[1], int(ref[2]))

    def take_inbox(self, ref: RunRef) -> builtins.list[str]:
        return _list(self._ref_run("take_inbox", ref, {})["messages"])

    def close_inbox(self, ref: RunRef) -> None:
        self._ref_run("close_inbox", ref, {})

    def ask(self, ref: RunRef, question: str, *, now: float) -> str | None:
        found = self._ref_run("ask", ref, {"question": question, "now": _t(now)}).get("id")
        return None if found is None else str(found)

    # -- delivery ---------------------------------------------------------------------------------

    def lease(self, session: str, request: LeaseRequest) -> Lease | None:
        lease_id = f"{uuid.uuid4().hex}@{session}"
        expires_at = request.now + request.lease_seconds
        result = self._session_run(
            "lease",
            session,
            {
                "lease_id": lease_id,
                "epoch": request.epoch,
                "now": _t(request.now),
                "expires_at": _t(expires_at),
                "max_chars": request.max_chars,
                "item_overhead": request.item_overhead,
                "max_entries": request.max_entries,
            },
        )
        found = result.get("lease")
        if found is None:
            return None
        notifications = tuple(_notification(item) for item in _list(found["notifications"]))
        return Lease(lease_id, session, notifications, expires_at, int(found["remaining"]))

    def _lease_run(self, operation: str, lease_id: str, request: dict[str, Any], counted: str) -> int:
        """Run a lease operation on the lease's session and on every session its notifications
        were transferred to since."""
        _, at, home = lease_id.partition("@")
        if not at:
            return 0
        request["lease_id"] = lease_id
        total = 0
        todo = [home]
        seen: set[str] = set()
        while todo:
            session = todo.pop(0)
            if session in seen:
                continue
            seen.add(session)
            result = self._session_run(operation, session, dict(request))
            total += int(result[counted])
            todo.extend(_list(result.get("fw")))
        return total

    def confirm(self, lease_id: str, *, now: float) -> int:
        return self._lease_run("confirm", lease_id, {"now": _t(now)}, "deleted")

    def give_back(self, lease_id: str, *, now: float, only: Collection[str] | None = None) -> int:
        return self._lease_run(
            "give_back", lease_id, {"now": _t(now), "only": None if only is None else sorted(only)}, "returned"
        )

    def acknowledge(self, session: str, notification_ids: Collection[str], *, now: float) -> int:
        if not notification_ids:
            return 0
        result = self._session_run("acknowledge", session, {"ids": sorted(notification_ids), "now": _t(now)})
        return int(result["deleted"])

    def restore(self, session: str, notifications: Sequence[TaskNotification], *, now: float) -> int:
        if not notifications:
            return 0
        result = self._session_run(
            "restore", session, {"notifications": [encode_notification(n) for n in notifications], "now": _t(now)}
        )
        return int(result["restored"])

    # -- maintenance ------------------------------------------------------------------------------

    def _dead_epochs(self) -> dict[str, str]:
        """Registered epochs whose key expired: epoch -> "worker W stopped (last heartbeat …)"."""
        beats = self._command(self._client.hgetall, self._epochs_key)
        if not beats:
            return {}
        epochs = [epoch.decode() for epoch in beats]
        pipe = self._client.pipeline(transaction=False)
        for epoch in epochs:
            pipe.exists(self._epoch_key(epoch))
        alive = self._command(pipe.execute)
        dead: dict[str, str] = {}
        for epoch, exists in zip(epochs, alive, strict=True):
            if not exists:
                last = float(beats[epoch.encode()])
                stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last))
                dead[epoch] = f"worker {epoch} stopped (last heartbeat {stamp})"
        return dead

    def _recover_dead(self, now: float) -> int:
        dead = self._dead_epochs()
        if not dead:
            return 0
        return self._recover_sessions(now, dead, forget=True, expire=False)

    def _recover_sessions(self, now: float, dead: dict[str, str], *, forget: bool, expire: bool) -> int:
        """Orphan the live runs of ``dead`` epochs in every session (and, with ``expire``,
        reopen expired leases at ``now``). The heartbeat's pass does not expire leases: lease
        times are the callers' clock, which need not be this one."""
        orphaned = 0
        still_live: set[str] = set()
        tokens = self._dead_reservations(dead)
        consumed: set[str] = set()
        for session in self._all_sessions():
            request = {"now": _t(now), "dead": dead, "expire": expire, "tokens": tokens.get(session, [])}
            result = self._session_run("recover", session, request)
            orphaned += int(result["orphaned"])
            still_live.update(_list(result["epochs"]))
            consumed.update(_list(result.get("consumed")))
        if tokens:
            everyone = [token for found in tokens.values() for token in found]
            unused = [token for token in everyone if token not in consumed]
            taken = [token for token in everyone if token in consumed]
            released = int(self._total("settle", [self._total_keys[0], self._total_keys[2]], [len(unused), *unused, *taken]))
            if released:
                logger.warning("gave back %d store-wide slot(s) reserved by stopped workers", released)
                self._release_total(0)
        if forget and dead:
            gone = [epoch for epoch in dead if epoch not in still_live]
            if gone:
                self._command(self._client.hdel, self._epochs_key, *gone)
        return orphaned

    def _dead_reservations(self, dead: dict[str, str]) -> dict[str, builtins.list[str]]:
        """Store-wide reservations made by ``dead`` epochs, by session: session -> tokens."""
        if not dead:
            return {}
        found = self._command(self._client.hgetall, self._total_keys[2])
        tokens: dict[str, builtins.list[str]] = {}
        for token, owner in found.items():
            epoch, _, session = owner.decode().partition("\t")
            if epoch in dead:
                tokens.setdefault(session, []).append(token.decode())
        return tokens

    def recover(self, *, now: float) -> int:
        return self._recover_sessions(now, self._dead_epochs(), forget=True, expire=True)

    def gc_finished(self, session: str) -> int:
        return int(self._session_run("gc_finished", session, {})["removed"])

    # -- reads ------------------------------------------------------------------------------------

    def get(self, session: str, key: str) -> BackgroundTask | None:
        found = self._session_run("get", session, {"key": key}).get("task")
        return None if found is None else _task(found)

    def get_run(self, ref: RunRef) -> BackgroundTask | None:
        found = self._ref_run("get_run", ref, {}).get("task")
        return None if found is None else _task(found)

    def run_digest(self, ref: RunRef) -> str | None:
        result = self._ref_run("get_run", ref, {})
        digest = result.get("digest")
        return None if result.get("task") is None or digest is None else str(digest)

    def list(
        self, session: str | None, *, status: TaskStatus | None = None, kind: str | None = None, parent: str | None = None
    ) -> builtins.list[BackgroundTask]:
        sessions = self._all_sessions() if session is None else [session]
        request = {"status": None if status is None else status.value, "kind": kind, "parent": parent}
        tasks = [
            _task(item)
            for name in sessions
            for item in _list(self._session_run("list", name, dict(request))["tasks"])
        ]
        tasks.sort(key=lambda task: (task.created_at, task.generation))
        return tasks

    def counts(self, session: str, *, now: float) -> SessionCounts:
        result = self._session_run("counts", session, {"now": _t(now)})
        return SessionCounts(
            live=int(result["live"]),
            running=int(result["running"]),
            queued=int(result["queued"]),
            pending=int(result["pending"]),
            leased=int(result["leased"]),
            records=int(result["records"]),
            next_expiry=_time(result.get("next_expiry")),
        )

    def leases(self, session: str, *, now: float) -> builtins.list[LeaseInfo]:
        result = self._session_run("leases", session, {"now": _t(now)})
        return [
            LeaseInfo(item[0], session, tuple(_list(item[1])), tuple(_list(item[2])), float(item[3]))
            for item in _list(result["leases"])
        ]

    def pending(self, session: str, *, now: float) -> builtins.list[TaskNotification]:
        result = self._session_run("pending", session, {"now": _t(now)})
        return [_notification(item) for item in _list(result["notifications"])]

    def sessions(self) -> builtins.list[str]:
        return [name for name in self._all_sessions() if self._session_run("info", name, {})["used"]]

    def referenced_relay_paths(self) -> set[str]:
        paths: set[str] = set()
        for name in self._all_sessions():
            paths.update(_list(self._session_run("info", name, {})["paths"]))
        return paths

    def flush_prefix(self) -> None:
        """Delete every key of this backend's prefix (tests and tools)."""
        cursor = 0
        while True:
            cursor, keys = self._command(self._client.scan, cursor, f"{{{self.prefix}*", 500)
            if keys:
                self._command(self._client.delete, *keys)
            if cursor == 0:
                return


def _id_after(a: str, b: str) -> bool:
    """Whether stream entry id ``a`` is after ``b``."""
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq or 0)) > (int(b_ms), int(b_seq or 0))


def _state(data: Sequence[str]) -> TaskState:
    return decode_state(data)
