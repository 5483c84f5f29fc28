"""Bounding text: ``head_cap`` for errors, and the head/tail preview of a relayed output.

All are pure functions. The preview never copies more of a huge input than it can show, so a
5 MB single line costs a bounded slice, not a split of the whole text.

Every marker is ASCII, so a preview of an ASCII output is itself ASCII (one byte a character in
memory). One UTF-8 error policy holds throughout: a lone surrogate (what ``surrogateescape``
decoding leaves in a ``str``) counts as, and is written as, U+FFFD REPLACEMENT CHARACTER; see
:func:`replace_surrogates`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Preview",
    "build_preview",
    "count_lines",
    "count_newlines",
    "cut_to_bytes",
    "head_cap",
    "let_others_run",
    "preview_of_lines",
    "replace_surrogates",
    "utf8_size",
]

# A cut line keeps at least this many bytes before lines are dropped from the preview instead.
_MIN_LINE_BYTES = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
# Below this many bytes a line, ``bytes.count`` beats the memchr-driven ``bytes.replace``.
_DENSE_LINE_BYTES = 20
_DENSITY_SAMPLE_BYTES = 4096


let_others_run: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
"""Offer the CPU to other runnable threads (``sched_yield`` where the OS has it, else nothing).

Called between the chunks of a long encode, count or hash in a worker thread: on a machine with
busy cores, the event loop's thread gets its turn at once instead of after a scheduler time
slice of several milliseconds."""


def replace_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so that it encodes to UTF-8.

    This is the one error policy of the relay and the reminders: the relayed file, the preview
    and the reminder all carry U+FFFD where the text held a surrogate, so they agree.
    """
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def utf8_size(text: str) -> int:
    """The UTF-8 size of ``text`` under the surrogate policy (a surrogate, like U+FFFD, is 3 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def head_cap(text: str, limit: int, what: str, *, total_chars: int | None = None) -> str:
    """Keep the first ``limit`` characters of ``text`` and append a marker saying what was cut.

    Text within the limit comes back unchanged. Otherwise the result is the head followed by
    ``...[<what> truncated: dropped N of M characters]``. ``total_chars`` is the length of the
    whole text when ``text`` is only its beginning (it defaults to ``len(text)``).
    """
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"head_cap limit must be a non-negative int, got {limit!r}")
    total = len(text) if total_chars is None else total_chars
    if total <= limit:
        return text
    return f"{text[:limit]}...[{what} truncated: dropped {total - limit} of {total} characters]"


def count_lines(text: str) -> int:
    """Lines in ``text``: a final line without a newline counts, an empty text has none."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def count_newlines(data: bytes) -> int:
    """The number of ``b"\\n"`` in ``data``, by the fastest of two scans for its density.

    ``bytes.replace`` finds newlines with ``memchr``, several times faster than ``bytes.count``
    on ordinary lines; on lines shorter than about 20 bytes its per-newline cost loses, so a
    sample of the start picks ``bytes.count`` there.
    """
    sample = min(len(data), _DENSITY_SAMPLE_BYTES)
    if data.count(b"\n", 0, sample) * _DENSE_LINE_BYTES > sample:
        return data.count(b"\n")
    return len(data) - len(data.replace(b"\n", b""))


def cut_to_bytes(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``.

    Never splits a character. A lone surrogate counts as U+FFFD and comes back as U+FFFD.
    Only ``max_bytes`` characters are ever encoded, however long ``text`` is.
    """
    head = replace_surrogates(text[:max_bytes])
    if head.isascii():
        return head
    data = head.encode("utf-8")
    if len(data) <= max_bytes:
        return head
    return data[:max_bytes].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class _Line:
    text: str  # possibly already cut to the budget; valid UTF-8
    chars: int  # the full line's length in characters
    encoded_bytes: int  # UTF-8 size of ``text``


@dataclass(frozen=True, slots=True)
class Preview:
    """A bounded view of a long text: its first and last lines around an elision marker."""

    text: str
    total_lines: int
    elided_lines: int


def build_preview(
    text: str, *, head_lines: int, tail_lines: int, max_bytes: int, total_lines: int | None = None
) -> Preview:
    """The first ``head_lines`` and last ``tail_lines`` lines of ``text``, with a marker that
    counts the lines left out, in at most ``max_bytes`` UTF-8 bytes.

    Long lines are cut (each keeps a fair share of the budget and a ``...[+N chars]`` marker);
    if even short cuts do not fit, lines nearest the marker are dropped and counted as elided.
    ``total_lines`` is ``count_lines(text)`` if the caller has it already.
    Raises ``ValueError`` if ``max_bytes`` is negative.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
    total = count_lines(text) if total_lines is None else total_lines
    if total <= head_lines + tail_lines:
        head, tail = _first_lines(text, total, max_bytes), []
    else:
        head = _first_lines(text, head_lines, max_bytes)
        tail = _last_lines(text, tail_lines, max_bytes)
    return _fit_preview(head, tail, total, max_bytes)


def preview_of_lines(
    head: Sequence[tuple[str, int]], tail: Sequence[tuple[str, int]], *, total_lines: int, max_bytes: int
) -> Preview:
    """The preview :func:`build_preview` makes, from lines already picked out of a text that
    is no longer whole in memory (a stream).

    ``head`` and ``tail`` are the first and last lines to show, each as ``(start, chars)``:
    the line's beginning (at least ``max_bytes`` characters of it, when it is that long) and
    its full length in characters. Lines between them, ``total_lines - len(head) - len(tail)``,
    are counted as elided. Raises ``ValueError`` if ``max_bytes`` is negative.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
    return _fit_preview(
        [_make_line(start, 0, len(start), max_bytes, chars) for start, chars in head],
        [_make_line(start, 0, len(start), max_bytes, chars) for start, chars in tail],
        total_lines,
        max_bytes,
    )


def _fit_preview(head: list[_Line], tail: list[_Line], total: int, max_bytes: int) -> Preview:
    elided = total - len(head) - len(tail)
    while True:
        fitted = _fit_lines(head, tail, elided, max_bytes)
        if fitted is not None:
            return Preview(fitted, total, elided)
        if not head and not tail:
            return Preview(cut_to_bytes(_elision_marker(elided), max_bytes), total, elided)
        # Drop the line nearest the marker, alternating sides so head and tail stay balanced.
        if len(head) >= len(tail):
            head.pop()
        else:
            tail.pop(0)
        elided += 1


def _first_lines(text: str, count: int, max_chars: int) -> list[_Line]:
    lines: list[_Line] = []
    start = 0
    for _ in range(count):
        end = text.find("\n", start)
        if end == -1:
            end = len(text)
        lines.append(_make_line(text, start, end, max_chars, end - start))
        start = end + 1
        if start >= len(text):
            break
    return lines


def _last_lines(text: str, count: int, max_chars: int) -> list[_Line]:
    lines: list[_Line] = []
    end = len(text) - 1 if text.endswith("\n") else len(text)
    for _ in range(count):
        start = text.rfind("\n", 0, end) + 1
        lines.append(_make_line(text, start, end, max_chars, end - start))
        end = start - 1
        if end < 0:
            break
    lines.reverse()
    return lines


def _make_line(text: str, start: int, end: int, max_chars: int, chars: int) -> _Line:
    shown = replace_surrogates(text[start : min(end, start + max_chars)])
    return _Line(shown, chars, len(shown) if shown.isascii() else len(shown.encode("utf-8")))


def _cut_marker(dropped_chars: int) -> str:
    return f" ...[+{dropped_chars} chars]"


def _elision_marker(elided: int) -> str:
    return f"[... {elided} lines elided ...]"


def _render_line(line: _Line, cap: int) -> str:
    if line.encoded_bytes <= cap and len(line.text) == line.chars:
        return line.text
    kept = cut_to_bytes(line.text, cap)
    return kept + _cut_marker(line.chars - len(kept))


def _fit_lines(head: list[_Line], tail: list[_Line], elided: int, max_bytes: int) -> str | None:
    lines = head + tail
    marker_bytes = len(_elision_marker(elided)) if elided else 0
    newlines = max(len(lines) + (1 if elided else 0) - 1, 0)
    budget = max_bytes - marker_bytes - newlines
    if budget < 0:
        return None
    widest = max((line.encoded_bytes for line in lines), default=0)
    # An upper bound on what _render_line makes of each line at a cap: a whole line costs its
    # bytes up to the cap; past it, or when already cut, the cap and its marker. Kept as pairs,
    # so each cap tried costs one pass and no call per line.
    costs = [
        (line.encoded_bytes if len(line.text) == line.chars else -1, len(_cut_marker(line.chars))) for line in lines
    ]

    def cost(cap: int) -> int:
        return sum(size if 0 <= size <= cap else cap + marker for size, marker in costs)

    if cost(widest) <= budget:
        cap = widest
    elif cost(_MIN_LINE_BYTES) > budget:
        return None
    else:
        low, high = _MIN_LINE_BYTES, widest
        while low < high:
            middle = (low + high + 1) // 2
            if cost(middle) <= budget:
                low = middle
            else:
                high = middle - 1
        cap = low
    parts = [_render_line(line, cap) for line in head]
    if elided:
        parts.append(_elision_marker(elided))
    parts.extend(_render_line(line, cap) for line in tail)
    return "\n".join(parts)
