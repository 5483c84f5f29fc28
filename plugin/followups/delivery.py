"""``ReminderDelivery``: a reminder whose notifications are leased from the ledger until the
delivery is settled.

A framework adapter takes the reminder before the framework calls the model, and only learns
later whether that call happened. The notifications stay in the ledger meanwhile, leased:
:meth:`ReminderDelivery.confirm` once the reminder reached the model (or the history the
framework keeps), :meth:`ReminderDelivery.give_back` if it did not, which makes them pending
again at their places. A delivery that is never settled (dropped, or held by a process that
died) expires after ``settings.delivery_lease_seconds`` and its notifications come back by
themselves. The lease can be settled by id from anywhere (:meth:`Session.settle`), so nothing
unsettled lives only in this object.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType

from .ledger.labels import ReminderLabel
from .reminders import RenderedReminder, ReminderRenderer
from .session import Session
from .state import TaskNotification, TaskState

__all__ = [
    "ReminderDelivery",
    "label_delivery",
    "reminder_digest",
    "settle_from_history",
    "settle_from_texts",
    "take_delivery",
    "take_followup",
    "take_prompt_reminder",
]


class ReminderDelivery:
    """One rendered reminder and the notifications its lease carries, awaiting its outcome.

    Settling is idempotent and thread-safe: the first :meth:`confirm` or :meth:`give_back`
    decides, from any thread, and later calls do nothing. Used as a context manager, the
    block's success confirms it and any exception (cancellation included) gives it back.
    ``lease_id`` and ``notification_ids`` identify it in the ledger: attach the ids to the
    message you inject, so a redelivery after a crash can be recognised
    (:meth:`Session.acknowledge`).
    """

    __slots__ = (
        "__weakref__",
        "_labelled",
        "_lock",
        "_settled",
        "expires_at",
        "lease_id",
        "notifications",
        "session",
        "text",
    )

    def __init__(
        self,
        session: Session,
        text: str,
        notifications: Sequence[TaskNotification],
        *,
        lease_id: str,
        expires_at: float,
    ) -> None:
        self.session = session
        self.text = text
        self.notifications: tuple[TaskNotification, ...] = tuple(notifications)
        self.lease_id = lease_id
        self.expires_at = expires_at
        self._lock = threading.Lock()
        self._settled = False
        self._labelled = False

    @property
    def store(self) -> Session:
        """The session the delivery was taken from (named ``store`` for older code)."""
        return self.session

    @property
    def task_ids(self) -> tuple[str, ...]:
        """The ids of the tasks this reminder reports on, in order."""
        return tuple(notification.id for notification in self.notifications)

    @property
    def notification_ids(self) -> tuple[str, ...]:
        """The stable ids of the notifications this reminder carries, in order."""
        return tuple(notification.notification_id for notification in self.notifications)

    @property
    def settled(self) -> bool:
        """True once confirmed or given back."""
        return self._settled

    def _settle(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
        if self._labelled:
            _LABELLED.pop(self.lease_id, None)
            self.session.reminder_labels.discard(self.lease_id)
        return True

    def confirm(self) -> int:
        """The reminder reached the model: its notifications are delivered for good (except one
        re-reported since, which stays pending with its newer state). Returns how many."""
        if not self._settle():
            return 0
        return self.session.settle(self.lease_id, delivered=True)

    def give_back(self) -> int:
        """The reminder never reached the model: its notifications are pending again, at their
        places in finish order. Returns how many; 0 if the delivery was already settled."""
        if not self._settle():
            return 0
        return self.session.settle(self.lease_id, delivered=False)

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
        return f"ReminderDelivery(lease_id={self.lease_id!r}, task_ids={self.task_ids!r}, {state})"


def renderer_for(session: Session, renderer: ReminderRenderer | None) -> ReminderRenderer:
    """The given renderer, else the one the store compiled for its settings."""
    return renderer if renderer is not None else session.renderer


def take_delivery(
    session: Session,
    fit: Callable[[Sequence[TaskNotification]], RenderedReminder],
    *,
    max_chars: int | None = None,
    item_overhead: int = 0,
) -> ReminderDelivery | None:
    """Lease the pending notifications that fit ``max_chars`` (see :meth:`Session.lease`) and
    render what fits with ``fit`` into an unsettled delivery.

    Returns None when nothing is pending. The leased notifications ``fit`` does not carry are
    given back at once; if ``fit`` raises, all of them are, before the error propagates. Never
    suspends, so it is safe from any thread or event loop; its cost grows with what is
    delivered, not with the backlog.
    """
    return _deliver(session, lambda batch, more: fit(batch), max_chars=max_chars, item_overhead=item_overhead)


def _deliver(
    session: Session,
    fit: Callable[[Sequence[TaskNotification], int], RenderedReminder],
    *,
    max_chars: int | None,
    item_overhead: int,
) -> ReminderDelivery | None:
    """:func:`take_delivery`, with ``fit`` also told how many notifications stay pending."""
    lease = session.lease(max_chars=max_chars, item_overhead=item_overhead)
    if lease is None:
        return None
    notifications = lease.notifications
    try:
        rendered = fit(notifications, lease.remaining)
    except BaseException:
        session.settle(lease.id, delivered=False)
        raise
    if rendered.delivered < len(notifications):
        rest = {notification.notification_id for notification in notifications[rendered.delivered :]}
        session.settle(lease.id, delivered=False, only=rest)
    return ReminderDelivery(
        session,
        rendered.text,
        notifications[: rendered.delivered],
        lease_id=lease.id,
        expires_at=lease.expires_at,
    )


def take_followup(session: Session, renderer: ReminderRenderer | None = None) -> ReminderDelivery | None:
    """The standalone reminder for a user-role turn (the ``followup.j2`` form, within
    ``settings.reminder_budget_chars``), as an unsettled delivery; None when nothing is pending.

    ``renderer`` defaults to the one the store compiled for its settings.
    """
    render = renderer_for(session, renderer)
    budget = session.settings.reminder_budget_chars
    return _deliver(
        session,
        lambda batch, more: render.fit_followup(batch, budget, more=more),
        max_chars=max(budget - followup_frame_chars(render), 0),
        item_overhead=followup_item_overhead(render),
    )


def take_prompt_reminder(session: Session, prompt: str, renderer: ReminderRenderer | None = None) -> ReminderDelivery | None:
    """The reminder prepended to ``prompt`` (the ``prompt.j2`` form, the prompt included in the
    text), as an unsettled delivery; None when nothing is pending."""
    render = renderer_for(session, renderer)
    budget = session.settings.reminder_budget_chars
    return _deliver(
        session,
        lambda batch, more: render.fit_prompt(batch, prompt, budget, more=more),
        max_chars=max(budget - prompt_frame_chars(render), 0),
        item_overhead=prompt_item_overhead(render),
    )


@functools.lru_cache(maxsize=64)
def followup_item_overhead(renderer: ReminderRenderer) -> int:
    """What one more task adds to a follow-up reminder beyond its id and text, measured once per
    renderer (the lease uses it to take only what fits the budget)."""
    one = [TaskNotification("", TaskState.completed(""))]
    two = one * 2
    return max(0, len(renderer.render_followup(two)) - len(renderer.render_followup(one)))


@functools.lru_cache(maxsize=64)
def prompt_item_overhead(renderer: ReminderRenderer) -> int:
    """:func:`followup_item_overhead` for the prepended form."""
    one = [TaskNotification("", TaskState.completed(""))]
    return max(0, len(renderer.render_prompt(one * 2, "")) - len(renderer.render_prompt(one, "")))


# -- settling from a history ------------------------------------------------------------------

METADATA_KEY = "followups"
"""The key under which adapters put :func:`delivery_metadata` in a framework message's metadata."""


def delivery_metadata(delivery: ReminderDelivery) -> dict[str, object]:
    """What an adapter attaches to the message carrying ``delivery``, in the framework's own
    metadata field: the lease id and the notification ids (plain JSON, so a checkpointer or a
    saved history keeps it)."""
    return {"lease_id": delivery.lease_id, "notification_ids": list(delivery.notification_ids)}


def parse_delivery_metadata(value: object) -> tuple[str, tuple[str, ...]] | None:
    """``(lease_id, notification_ids)`` from :func:`delivery_metadata`'s form, or None when
    ``value`` is not that form (a message another program added, a damaged history)."""
    if not isinstance(value, dict):
        return None
    lease_id = value.get("lease_id")
    ids = value.get("notification_ids")
    if not isinstance(lease_id, str) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    return lease_id, tuple(ids)


def settle_from_history(
    session: Session,
    carried: Sequence[tuple[str, Sequence[str]]],
    *,
    give_back_absent: bool = False,
    in_flight: Collection[str] = (),
) -> tuple[int, int]:
    """Settle deliveries from what a framework's history shows, whoever took them.

    ``carried`` lists ``(lease_id, notification_ids)`` of the reminders found in the history:
    each is confirmed (its lease, if still open), and its notifications are acknowledged, so one
    whose lease expired and came back pending is not delivered a second time. With
    ``give_back_absent``, every other open lease of ``session`` is given back: the caller states
    that the history is the session's only consumer and a reminder missing from it died with a
    failed run (a lease that expired has already come back by itself). Leases in ``in_flight``
    (the caller's own, in a model call under way) are left alone. Returns ``(confirmed,
    given_back)`` notification counts. Each step is one ledger call; safe from any thread.
    """
    confirmed = 0
    present = set()
    for lease_id, notification_ids in carried:
        present.add(lease_id)
        if lease_id in in_flight:
            continue
        confirmed += session.settle(lease_id, delivered=True)
        if notification_ids:
            confirmed += session.acknowledge(notification_ids)
    given_back = 0
    if give_back_absent:
        for lease in session.leases():
            if lease.id not in present and lease.id not in in_flight:
                given_back += session.settle(lease.id, delivered=False)
    return confirmed, given_back


# Stands for any count of notifications still to come when the frame is measured.
_MANY_REMAINING = 10**9


@functools.lru_cache(maxsize=64)
def followup_frame_chars(renderer: ReminderRenderer) -> int:
    """What a follow-up reminder takes of the budget beyond its notifications' weights: the
    frame and the "still to come" line (with a ten-digit count), measured once per renderer.
    The lease leaves this room, so what it takes fits in one render: without it, a backlog
    of short results filled the budget and every reminder was rendered again a dozen times
    to find the prefix that fits."""
    one = [TaskNotification("", TaskState.completed(""))]
    return max(0, len(renderer.render_followup(one, remaining=_MANY_REMAINING)) - followup_item_overhead(renderer))


@functools.lru_cache(maxsize=64)
def prompt_frame_chars(renderer: ReminderRenderer) -> int:
    """:func:`followup_frame_chars` for the prepended form (the prompt does not count)."""
    one = [TaskNotification("", TaskState.completed(""))]
    return max(0, len(renderer.render_prompt(one, "", remaining=_MANY_REMAINING)) - prompt_item_overhead(renderer))


# -- recognising a reminder by its text ---------------------------------------------------------


def reminder_digest(text: str) -> str:
    """The digest that recognises a reminder by its exact text (blake2b, 128 bits, of its UTF-8
    form; a lone surrogate counts as U+FFFD)."""
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()


def label_delivery(delivery: ReminderDelivery, history_texts: Iterable[str] = ()) -> ReminderLabel:
    """Label ``delivery`` for a history that keeps no metadata, just before its text is added
    to it: ``history_texts`` are the texts that history already holds (the user-role ones
    suffice), counted for copies of the same text. Settling the delivery discards the label.
    Safe from any thread; costs one pass over ``history_texts``."""
    text = delivery.text
    prior = sum(1 for existing in history_texts if existing == text)
    label = ReminderLabel(
        delivery.lease_id, delivery.session.id, delivery.notification_ids, reminder_digest(text), prior
    )
    delivery.session.reminder_labels.add(label)
    delivery._labelled = True
    _LABELLED[delivery.lease_id] = delivery
    return label


_LABELLED: weakref.WeakValueDictionary[str, ReminderDelivery] = weakref.WeakValueDictionary()
"""This process's labelled deliveries still unsettled, by lease id: one that a history settles is
marked settled too, so its holder's later ``give_back`` cannot take back what the history has."""


def settle_from_texts(session: Session, texts: Iterable[str], *, in_flight: Collection[str] = ()) -> int:
    """Settle, from the texts of a history that keeps no metadata, the labelled deliveries of
    ``session`` (:func:`label_delivery`) whose reminder it carries: each one whose text it holds
    more often than before the reminder was added is confirmed and its notifications
    acknowledged, whoever took it and even if its lease expired meanwhile, so a history saved
    by a process that died holding the lease never shows the result twice. A reminder the
    history does not carry is left to its lease, which gives it back when it expires. A
    delivery of this process settled this way counts as settled (its holder's later
    ``give_back`` does nothing). Leases in ``in_flight`` are left alone. Returns how many
    notifications it settled. Reads ``texts`` only when the session has a label; safe from any
    thread."""
    labels = session.reminder_labels
    if not labels.has_any(session.id):
        return 0
    counts = Counter(reminder_digest(text) for text in texts)
    if not counts:
        return 0
    found = [
        label
        for label in labels.find(session.id, counts.keys())
        if counts[label.digest] > label.prior and label.lease_id not in in_flight
    ]
    if not found:
        return 0
    for label in found:
        held = _LABELLED.get(label.lease_id)
        if held is not None:
            held._settle()  # first, so its holder can no longer give it back
    confirmed, _ = settle_from_history(session, [(label.lease_id, label.notification_ids) for label in found])
    for label in found:
        labels.discard(label.lease_id)
    return confirmed
