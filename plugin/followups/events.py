"""Lifecycle events for UIs: filtered subscriptions that any event loop can iterate, and the UI
sink, each fed from whatever thread caused the event and read on its own loop.

A slow reader never blocks the store and never affects a notification: a subscription keeps at
most ``buffer`` events and reports what it had to drop as one :class:`~followups.Lagged`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from types import TracebackType
from typing import Any, cast

import anyio
import trio

from .loops import EventLoopHandle
from .state import Lagged, LifecycleEvent, TaskFinished, TaskStarted
from .wakeup import ChangeSignal

__all__ = ["EventHub", "Subscription", "UISink"]

logger = logging.getLogger("followups.events")

UISink = Callable[[LifecycleEvent], object] | Any
"""A memory send stream or channel (anything with ``send_nowait``), or a synchronous callable."""

_CLOSED_ERRORS = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.BrokenResourceError,
)


_SINK_EVENTS = (TaskStarted, TaskFinished)


class _Gap:
    """Where a full subscription dropped events: becomes a ``Lagged(count)`` when read."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class Subscription:
    """A stream of lifecycle events: ``async for event in subscription``.

    It yields the events that match its filters (``session``, ``kinds``, and whether
    :class:`~followups.TaskFinished` is included), in the order they were published, plus a
    :class:`~followups.Lagged` where its buffer overflowed. Iterate it from any one task, on
    trio or asyncio; events may be caused on any thread. :meth:`close` (or leaving
    ``async with``) ends the iteration; a closed subscription receives nothing more.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        session: str | None,
        kinds: Collection[str] | None,
        include_finished: bool,
        buffer: int,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be a positive number of events, got {buffer!r}")
        self.session = session
        self.kinds = None if kinds is None else frozenset(kinds)
        self.include_finished = include_finished
        self.buffer = buffer
        self._hub = hub
        self._lock = threading.Lock()
        self._items: deque[LifecycleEvent | _Gap] = deque()
        self._signal = ChangeSignal()
        self._closed = False

    def matches(self, event: LifecycleEvent) -> bool:
        if self.session is not None and event.session != self.session:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        return self.include_finished or not isinstance(event, TaskFinished)

    def offer(self, event: LifecycleEvent) -> None:
        """Queue ``event`` for the reader. Any thread; never blocks."""
        with self._lock:
            if self._closed:
                return
            items = self._items
            if len(items) < self.buffer:
                items.append(event)
            elif items and isinstance(items[-1], _Gap):
                items[-1].count += 1
            else:
                items.append(_Gap())
        self._signal.bump()

    def offer_gap(self, count: int) -> None:
        """Record that ``count`` events this subscription may have matched were lost before
        reaching it: the reader gets a :class:`~followups.Lagged` in their place."""
        with self._lock:
            if self._closed or count < 1:
                return
            items = self._items
            if items and isinstance(items[-1], _Gap):
                items[-1].count += count
            else:
                gap = _Gap()
                gap.count = count
                items.append(gap)
        self._signal.bump()

    def receive_nowait(self) -> LifecycleEvent | Lagged | None:
        """The next event if one is queued, else None."""
        with self._lock:
            if not self._items:
                return None
            item = self._items.popleft()
        return Lagged(item.count) if isinstance(item, _Gap) else item

    def close(self) -> None:
        """Stop receiving events; an iteration in progress ends after what is queued. Idempotent."""
        with self._lock:
            self._closed = True
        self._hub.unsubscribe(self)
        self._signal.bump()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LifecycleEvent | Lagged:
        while True:
            version = self._signal.version
            item = self.receive_nowait()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            await self._signal.wait_beyond(version)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription session={self.session!r} kinds={sorted(self.kinds) if self.kinds else None}>"


class _Sink:
    """The UI sink: each :class:`~followups.TaskStarted` and :class:`~followups.TaskFinished`
    (the two events a UI sink has always received) is handed to it on its loop's thread, when
    it has one. :meth:`EventHub.subscribe` gives the other events."""

    def __init__(self, sink: UISink, loop: EventLoopHandle | None) -> None:
        self._call = _sink_caller(sink)
        self.loop = loop

    def deliver(self, event: LifecycleEvent) -> None:
        loop = self.loop
        if loop is None or loop.in_loop_thread() or not loop.call_soon(lambda: self._send(event)):
            self._send(event)

    def _send(self, event: LifecycleEvent) -> None:
        try:
            self._call(event)
        except _CLOSED_ERRORS:
            logger.debug("UI sink is closed; dropped %r", event)
        except (anyio.WouldBlock, trio.WouldBlock):
            logger.warning("UI sink is full; dropped %r (the notification is kept)", event)
        except Exception:
            logger.warning("UI sink failed on %r; the notification is kept", event, exc_info=True)


class EventHub:
    """Fans lifecycle events out to subscriptions and the UI sink. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription, ...] = ()
        self._sinks: tuple[_Sink, ...] = ()

    @property
    def wants_events(self) -> bool:
        """True while anyone listens; without listeners, events need not be built."""
        return bool(self._subscriptions or self._sinks)

    def publish(self, events: Iterable[LifecycleEvent]) -> None:
        """Hand each event to every matching subscription and to the sinks. Never raises."""
        subscriptions, sinks = self._subscriptions, self._sinks
        for event in events:
            for subscription in subscriptions:
                if subscription.matches(event):
                    subscription.offer(event)
            if sinks and isinstance(event, _SINK_EVENTS):
                for sink in sinks:
                    sink.deliver(event)

    def missed(self, session: str, count: int) -> None:
        """``count`` events of ``session`` were lost before reaching this process: each
        subscription that sees that session gets a :class:`~followups.Lagged`. Never raises."""
        for subscription in self._subscriptions:
            if subscription.session is None or subscription.session == session:
                subscription.offer_gap(count)

    def subscribe(
        self,
        *,
        session: str | None = None,
        kinds: Collection[str] | None = None,
        include_finished: bool = True,
        buffer: int = 256,
    ) -> Subscription:
        subscription = Subscription(
            self, session=session, kinds=kinds, include_finished=include_finished, buffer=buffer
        )
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def attach_sink(self, sink: UISink, loop: EventLoopHandle | None) -> None:
        """Add a UI sink, called on ``loop``'s thread when given (see :meth:`bind_loop`)."""
        with self._lock:
            self._sinks = (*self._sinks, _Sink(sink, loop))

    def bind_loop(self, loop: EventLoopHandle) -> None:
        """Give the sinks that have no loop yet this one."""
        for sink in self._sinks:
            if sink.loop is None:
                sink.loop = loop


def _sink_caller(sink: UISink) -> Callable[[LifecycleEvent], object]:
    send_nowait = getattr(sink, "send_nowait", None)
    if callable(send_nowait):
        return cast(Callable[[LifecycleEvent], object], send_nowait)
    if inspect.iscoroutinefunction(sink) or (callable(sink) and inspect.iscoroutinefunction(type(sink).__call__)):
        raise TypeError(
            "ui_sink must be synchronous: pass a memory send stream (anyio.create_memory_object_stream "
            "or trio.open_memory_channel) instead of an async function"
        )
    if callable(sink):
        return cast(Callable[[LifecycleEvent], object], sink)
    raise TypeError(f"ui_sink must be a memory send stream or a callable, got {type(sink).__name__}")

