"""``BackgroundStore``: the entry point. It opens a ledger backend (in memory by default),
compiles the relay and the renderer once, and is the view of its default session; every other
session is one :meth:`BackgroundStore.session` call away."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from types import TracebackType
from typing import Any

from .core import StoreCore
from .events import Subscription, UISink
from .ledger import LedgerBackend, MemoryBackend, open_backend, resolve_store_url
from .loops import EventLoopHandle
from .relay import OutputRelay
from .session import Session, check_session_id
from .settings import FollowupSettings
from .state import DEFAULT_SESSION, BackgroundTask, TaskStatus

__all__ = ["BackgroundStore"]


class BackgroundStore(Session):
    """Records of background tasks, the queue of their pending notifications, and their
    lifecycle events, for any number of sessions; itself the view of the default session.

    **Records.** Each session keeps at most ``settings.capacity`` records. A new task in a full
    session evicts the record that finished longest ago; only when every record is live is the
    oldest live one evicted (its run is cancelled). :meth:`get` never changes anything.

    **Notifications.** A run's final state queues one notification; a changed report updates
    it in place, keeping its place in finish order. Notifications are snapshots keyed by run:
    a finished task evicted before delivery is still delivered, and a reused task id never
    overwrites an undelivered result. A delivery is a lease (see :mod:`followups.delivery`):
    confirmed, given back, or reopened when it expires. Completed texts over the inline limits
    go through the :class:`OutputRelay`; error and cancel texts are capped.

    **Events.** ``ui_sink`` (a memory send stream or channel, or a callable) receives every
    :class:`~followups.TaskStarted` and :class:`~followups.TaskFinished` and the other
    lifecycle events, on the loop the store was built in (or the first pool's), whichever
    thread caused them; :meth:`subscribe` gives filtered streams. A closed, full or failing
    sink is logged and otherwise ignored: it never loses a notification.

    **Backends.** ``BackgroundStore()`` keeps everything in this process's memory;
    :meth:`open` picks a backend by URL. Close a store you opened (``with`` does).
    """

    def __init__(
        self,
        settings: FollowupSettings | None = None,
        *,
        ui_sink: UISink | None = None,
        relay: OutputRelay | None = None,
        backend: LedgerBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or FollowupSettings()
        core = StoreCore(self, settings, backend or MemoryBackend(), relay, clock)
        core.owns_backend = backend is None
        super().__init__(core, DEFAULT_SESSION)
        if ui_sink is not None:
            core.hub.attach_sink(ui_sink, EventLoopHandle.current_or_none())

    @classmethod
    def open(cls, url: str | None = None, settings: FollowupSettings | None = None, **options: Any) -> BackgroundStore:
        """A store on the backend ``url`` names: ``memory://``, ``sqlite:///relative.db``,
        ``sqlite:////absolute/path.db``, ``redis://host:port/db``. Without ``url``:
        ``settings.store_url``, else ``$FOLLOWUPS_STORE_URL``, else ``memory://``. ``options`` go
        to :class:`BackgroundStore`. Raises ``ValueError`` for a URL no backend takes.

        A durable store recovers on open: the live tasks of processes that stopped are failed
        "orphaned" and expired delivery leases reopen."""
        settings = settings or FollowupSettings()
        backend = open_backend(resolve_store_url(url, settings), settings)
        try:
            store = cls(settings, backend=backend, **options)
        except BaseException:
            backend.close()
            raise
        store._core.owns_backend = True
        return store

    @property
    def backend(self) -> LedgerBackend:
        return self._core.backend

    @property
    def epoch(self) -> str:
        """This store's epoch: the identity of this process in the ledger."""
        return self._core.epoch

    def session(self, session_id: str) -> Session:
        """The view of session ``session_id`` (a conversation or thread id). Cheap: make one
        whenever you need it."""
        return Session(self._core, session_id)

    def sessions(self) -> list[str]:
        """Every session that has a record or a pending notification."""
        return self._core.call(self._core.backend.sessions)

    def list_all(
        self, *, session: str | None = None, status: TaskStatus | str | None = None, kind: str | None = None
    ) -> list[BackgroundTask]:
        """Task records of every session (or of ``session``), oldest first by creation."""
        wanted = None if status is None else TaskStatus(status)
        tasks = self._core.call(self._core.backend.list, None if session is None else check_session_id(session), status=wanted, kind=kind)
        return [self._core.present(task) for task in tasks]

    def transfer(self, from_session: str, to_session: str, task_ids: Sequence[str] | None = None) -> list[str]:
        """Move the live tasks and undelivered notifications of ``from_session`` to
        ``to_session``: :meth:`Session.transfer_to` of ``from_session``."""
        return self.session(from_session).transfer_to(to_session, task_ids)

    def subscribe(
        self,
        session: str | None = None,
        *,
        kinds: Collection[str] | None = None,
        include_finished: bool = True,
        buffer: int = 256,
    ) -> Subscription:
        """Lifecycle events of every session (or of ``session``), as an async iterator;
        ``kinds`` filters by task kind. A slow subscriber never blocks the store: past
        ``buffer`` events it receives a :class:`~followups.Lagged` saying how many it missed."""
        return self._core.hub.subscribe(
            session=None if session is None else check_session_id(session),
            kinds=kinds,
            include_finished=include_finished,
            buffer=buffer,
        )

    def recover(self) -> int:
        """Reopen expired delivery leases and, on a durable backend, finish the live tasks of
        processes that are gone as failed "orphaned". Returns how many tasks it orphaned."""
        return self._core.call(self._core.backend.recover, now=self._core.clock())

    def bind_loop(self) -> None:
        """Deliver UI sink events on the calling task's loop from now on (a pool entered on the
        store does this for you)."""
        self._core.hub.bind_loop(EventLoopHandle.current())

    def close(self) -> None:
        """Stop the store's retries and disconnect it from its backend (closing a backend the
        store opened). Idempotent."""
        self._core.close()

    def __enter__(self) -> BackgroundStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
