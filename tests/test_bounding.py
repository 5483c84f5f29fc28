"""The digest that recognises a repeated report: the same for a text however long, and
different for different texts."""

from __future__ import annotations

import hashlib

from followups import TaskState
from followups.bounding import report_digest


def whole_digest(state: TaskState) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(state.status.value.encode() + b"\0" + state.text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def test_a_long_text_has_the_digest_of_its_whole_encoding() -> None:
    # non-ASCII characters and a lone surrogate at and around every 256K-character boundary
    piece = "é" * 1000 + "€\ud800" + "x" * (262_144 - 1002)
    text = (piece * 5)[:-3] + "\udfff🙂"
    for state in (TaskState.completed(text), TaskState.failed(text), TaskState.completed("short é")):
        assert report_digest(state) == whole_digest(state)


def test_texts_that_differ_anywhere_have_different_digests() -> None:
    base = "line of output\n" * 100_000
    changed_late = base[:-2] + "!\n"
    assert report_digest(TaskState.completed(base)) != report_digest(TaskState.completed(changed_late))
    assert report_digest(TaskState.completed(base)) != report_digest(TaskState.failed(base))
    assert report_digest(TaskState.completed(base)) == report_digest(TaskState.completed("".join(base)))
