"""Bounding a reported state before the ledger sees it: the one decision of whether a result is
too big to show whole, relaying it to a file or capping it, and the digest that recognises a
repeated report. Runs before any lock or transaction is taken."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .relay import CompressedText, OutputRelay
from .state import TaskState, TaskStatus
from .truncation import head_cap, let_others_run

__all__ = ["Bounded", "OutputBounds", "report_digest"]

_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED
# Reported texts longer than this are bounded and digested off the event loop.
HEAVY_TEXT_CHARS = 64 * 1024


# A long text is encoded for its digest this many characters at a time: each encode holds
# the GIL, the hash of each piece releases it, and the CPU is offered to other threads between
# pieces, so an event loop in another thread keeps running.
_DIGEST_CHUNK_CHARS = 1 << 18
_DIGEST_PREFIXES = {status: status.value.encode() + b"\0" for status in TaskStatus}


def report_digest(state: TaskState) -> str:
    """A stable digest of a state as it was reported (blake2b of status and text): equal in
    every process for equal states, so a repeated report is recognised as a duplicate.

    Thread-safe and pure. A long text is hashed in pieces of the same UTF-8 bytes, so the
    digest is the same as of the whole encoding and no single step holds the GIL for long."""
    text = state.text
    prefix = _DIGEST_PREFIXES[state.status]
    if len(text) <= _DIGEST_CHUNK_CHARS:
        return hashlib.blake2b(prefix + text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    digest = hashlib.blake2b(prefix, digest_size=16)
    for start in range(0, len(text), _DIGEST_CHUNK_CHARS):
        digest.update(text[start : start + _DIGEST_CHUNK_CHARS].encode("utf-8", "surrogatepass"))
        let_others_run()
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Bounded:
    """A state fit to show the model, and the file that holds the whole output, if relayed."""

    state: TaskState
    relay_path: str | None = None


class OutputBounds:
    """How big a reported state may be shown: a completed text the relay would relay is relayed
    (:meth:`OutputRelay.should_relay` is the only size decision) and its preview kept as a
    :class:`~followups.relay.CompressedText` where that saves memory, an error or cancel reason over
    ``max_error_chars`` is capped. Thread-safe; :meth:`bound` does file I/O."""

    def __init__(self, relay: OutputRelay, max_error_chars: int) -> None:
        self.relay = relay
        self.max_error_chars = max_error_chars

    def needs_bounding(self, state: TaskState) -> bool:
        if state.status is _COMPLETED:
            return self.relay.should_relay(state.text)
        return len(state.text) > self.max_error_chars

    def is_heavy(self, state: TaskState) -> bool:
        """True when bounding ``state`` writes a file or handles a long text: keep it off the
        event loop."""
        text = state.text
        return len(text) > HEAVY_TEXT_CHARS or (state.status is _COMPLETED and self.relay.should_relay(text))

    def bound(self, label: str, state: TaskState) -> Bounded:
        """``state`` relayed or capped as needed. A completed text is relayed under ``label``
        (which only decorates the file name); never raises for a failed write."""
        if state.status is _COMPLETED:
            if not self.relay.should_relay(state.text):
                return Bounded(state)
            outcome = self.relay.relay_if_large(label, state.text)
            if outcome.path is None:
                return Bounded(TaskState.completed(outcome.text))
            # A relayed preview waits in the ledger compressed, not as a string of up to
            # relay_inline_max_bytes: a backlog of undrained results costs a fraction of that each.
            compressed = CompressedText.of(outcome.text)
            if compressed is None:
                return Bounded(TaskState.completed(outcome.text), str(outcome.path))
            return Bounded(TaskState.deferred(_COMPLETED, compressed), str(outcome.path))
        what = "task error" if state.status is _FAILED else "cancel reason"
        capped = head_cap(state.text, self.max_error_chars, what)
        return Bounded(state if capped is state.text else TaskState(state.status, capped))
