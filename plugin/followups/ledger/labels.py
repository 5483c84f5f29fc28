"""Reminder labels: recognising, in a history that has no metadata field, the reminders a
delivery put there.

Some frameworks keep no metadata on the messages an adapter injects (an OpenAI Agents input
item, an Anthropic text block): the reminder's text is all a saved history keeps. A delivery
that rides in such a history is *labelled* when it is taken: the digest of its exact text, the
lease and notification ids it carries, and how many copies of that same text the history
already held (``prior``). A history found later carries the reminder when it holds more than
``prior`` copies of that text, so an identical earlier reminder (a reused task id reporting the
same result) is never mistaken for it.

A label is needed only while its delivery is unsettled: settling a labelled
:class:`~followups.ReminderDelivery` discards it. A backend may keep labels itself (so that
another process can recognise the reminders of one that died) by providing a
``reminder_labels`` attribute implementing :class:`ReminderLabels`; otherwise the store keeps
them in this process, shared by every store on the same backend object.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["InProcessReminderLabels", "ReminderLabel", "ReminderLabels", "labels_for"]


@dataclass(frozen=True, slots=True)
class ReminderLabel:
    """What recognises one delivered reminder by its text: ``digest`` of the text, the
    ``lease_id`` and ``notification_ids`` it carries, its ``session``, and ``prior``, the copies
    of the same text the history held before it was added."""

    lease_id: str
    session: str
    notification_ids: tuple[str, ...]
    digest: str
    prior: int = 0


@runtime_checkable
class ReminderLabels(Protocol):
    """Where labels are kept. Every method may be called from any thread and never blocks on
    an event loop."""

    def add(self, label: ReminderLabel) -> None:
        """Keep ``label`` (replacing one with the same lease id)."""
        ...

    def find(self, session: str, digests: Collection[str]) -> list[ReminderLabel]:
        """The labels of ``session`` whose digest is in ``digests``, oldest first."""
        ...

    def discard(self, lease_id: str) -> None:
        """Forget the label of ``lease_id`` (its delivery was settled). Unknown ids are ignored."""
        ...

    def has_any(self, session: str) -> bool:
        """True when ``session`` has a label: a history is worth reading only then."""
        ...


class InProcessReminderLabels:
    """:class:`ReminderLabels` in this process's memory, thread-safe, bounded: past
    ``max_labels`` the oldest label is dropped (its reminder, if ever found again, is then
    delivered once more rather than lost)."""

    def __init__(self, max_labels: int = 4096) -> None:
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise ValueError(f"max_labels must be a positive int, got {max_labels!r}")
        self.max_labels = max_labels
        self._lock = threading.Lock()
        self._labels: OrderedDict[str, ReminderLabel] = OrderedDict()
        self._per_session: dict[str, int] = {}

    def add(self, label: ReminderLabel) -> None:
        with self._lock:
            old = self._labels.pop(label.lease_id, None)
            if old is not None:
                self._uncount(old.session)
            self._labels[label.lease_id] = label
            self._per_session[label.session] = self._per_session.get(label.session, 0) + 1
            while len(self._labels) > self.max_labels:
                _, dropped = self._labels.popitem(last=False)
                self._uncount(dropped.session)

    def find(self, session: str, digests: Collection[str]) -> list[ReminderLabel]:
        with self._lock:
            if not self._per_session.get(session):
                return []
            return [label for label in self._labels.values() if label.session == session and label.digest in digests]

    def discard(self, lease_id: str) -> None:
        with self._lock:
            label = self._labels.pop(lease_id, None)
            if label is not None:
                self._uncount(label.session)

    def has_any(self, session: str) -> bool:
        return bool(self._per_session.get(session))

    def __len__(self) -> int:
        return len(self._labels)

    def _uncount(self, session: str) -> None:
        left = self._per_session.get(session, 0) - 1
        if left > 0:
            self._per_session[session] = left
        else:
            self._per_session.pop(session, None)


_SHARED: weakref.WeakKeyDictionary[object, InProcessReminderLabels] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def labels_for(backend: object) -> ReminderLabels:
    """The labels of ``backend``: its own ``reminder_labels`` if it keeps them, else an
    in-process registry shared by every store on that backend object."""
    own = getattr(backend, "reminder_labels", None)
    if isinstance(own, ReminderLabels):
        return own
    with _SHARED_LOCK:
        try:
            labels = _SHARED.get(backend)
            if labels is None:
                labels = _SHARED[backend] = InProcessReminderLabels()
        except TypeError:  # a backend that cannot be weakly referenced gets a registry per store
            labels = InProcessReminderLabels()
        return labels
