"""``ReminderDelivery``: a reminder taken from the store whose delivery is not yet settled.

A framework adapter drains the store before the framework calls the model, but only learns
later whether that call happened. The delivery token carries the rendered text and the
notifications behind it until the adapter settles it: :meth:`ReminderDelivery.confirm` once
the reminder reached the model (or the history the framework keeps),
:meth:`ReminderDelivery.give_back` if it did not, which puts the notifications back at the
front of the queue for the next boundary. Either way each notification is delivered once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from .reminders import RenderedReminder, ReminderRenderer
from .state import TaskNotification
from .store import BackgroundStore

__all__ = ["ReminderDelivery", "take_delivery", "take_followup"]


class ReminderDelivery:
    """One rendered reminder and the notifications it carries, awaiting its outcome.

    Settling is idempotent and thread-safe: the first :meth:`confirm` or :meth:`give_back`
    decides, from any thread, and later calls do nothing. Used as a context manager, the
    block's success confirms it and any exception (cancellation included) gives it back.
    """

    __slots__ = ("_lock", "_settled", "notifications", "store", "text")

    def __init__(self, store: BackgroundStore, text: str, notifications: Sequence[TaskNotification]) -> None:
        self.store = store
        self.text = text
        self.notifications: tuple[TaskNotification, ...] = tuple(notifications)
        self._lock = threading.Lock()
        self._settled = False

    @property
    def task_ids(self) -> tuple[str, ...]:
        """The ids of the tasks this reminder reports on, in order."""
        return tuple(notification.id for notification in self.notifications)

    @property
    def settled(self) -> bool:
        """True once confirmed or given back."""
        return self._settled

    def _settle(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    def confirm(self) -> None:
        """The reminder reached the model: its notifications are delivered for good."""
        self._settle()

    def give_back(self) -> int:
        """The reminder never reached the model: put its notifications back at the front of
        the store's queue (see :meth:`BackgroundStore.restore_notifications`). Returns how
        many went back; 0 if the delivery was already settled."""
        if not self._settle():
            return 0
        return self.store.restore_notifications(self.notifications)

    def __enter__(self) -> ReminderDelivery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.confirm()
        else:
            self.give_back()

    def __repr__(self) -> str:
        state = "settled" if self._settled else "unsettled"
        return f"ReminderDelivery(task_ids={self.task_ids!r}, {state})"


def renderer_for(store: BackgroundStore, renderer: ReminderRenderer | None) -> ReminderRenderer:
    """The given renderer, else the one the store's relay already compiled for its settings."""
    return renderer if renderer is not None else store.relay.renderer


def take_delivery(
    store: BackgroundStore, fit: Callable[[Sequence[TaskNotification]], RenderedReminder]
) -> ReminderDelivery | None:
    """Drain ``store`` and render what fits with ``fit`` into an unsettled delivery.

    Returns None when nothing is pending. The notifications ``fit`` does not carry go back to
    the front of the queue at once; if ``fit`` raises, all of them do before the error
    propagates. Never suspends, so it is safe from any thread or event loop.
    """
    drained = store.drain_notifications()
    if not drained:
        return None
    try:
        rendered = fit(drained)
    except BaseException:
        store.restore_notifications(drained)
        raise
    if rendered.delivered < len(drained):
        store.restore_notifications(drained[rendered.delivered :])
    return ReminderDelivery(store, rendered.text, drained[: rendered.delivered])


def take_followup(store: BackgroundStore, renderer: ReminderRenderer | None = None) -> ReminderDelivery | None:
    """The standalone reminder for a user-role turn (the ``followup.j2`` form, within
    ``settings.reminder_budget_chars``), as an unsettled delivery; None when nothing is pending.

    ``renderer`` defaults to the one the store's relay compiled for its settings.
    """
    render = renderer_for(store, renderer)
    budget = store.settings.reminder_budget_chars
    return take_delivery(store, lambda batch: render.fit_followup(batch, budget))
