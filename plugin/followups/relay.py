"""``OutputRelay``: a large task output goes to a private file, the model gets a bounded preview.

The rules for the relay directory, each checked again at every relay (nothing is cached):

- It is reached from ``/`` one component at a time, each opened with ``O_NOFOLLOW`` relative
  to its parent's descriptor. A symbolic link on the way is followed only if it is owned by
  this user or by root.
- Every directory on the way is owned by this user or by root. One that another user can
  write to (group- or world-writable) is refused, unless it is sticky and the entry in it is
  this user's (or root's); a group-writable one is fine when the group is this user's own
  private group.
- The relay directory itself is this user's and is made mode 0700.
- Files are created (``O_EXCL | O_NOFOLLOW``, mode 0600), renamed and removed relative to the
  directory's descriptor, so swapping a path while a relay runs cannot redirect a write. The
  preview names the file only if the directory is still at the path it names.
- Retention and the disk budget remove only regular files with the relay's exact name
  pattern, owned by this user, in that directory.

Every refusal and every OS error becomes an honest "could not be saved" preview.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import threading
import time
import weakref
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import ClassVar, Self

from .reminders import ReminderRenderer
from .settings import FollowupSettings
from .state import DeferredText
from .truncation import (
    build_preview,
    count_lines,
    count_newlines,
    cut_to_bytes,
    head_cap,
    let_others_run,
    preview_of_lines,
    replace_surrogates,
    utf8_size,
)

__all__ = ["CompressedText", "OutputRelay", "RelayOutcome", "RelayStream"]

logger = logging.getLogger("followups.relay")

_UNSAFE_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_RELAYED_FILE = re.compile(r"[A-Za-z0-9_-]+-[0-9]{8}T[0-9]{6}-[0-9a-f]{16}\.txt", re.ASCII)
_TEMP_PREFIX = ".tmp-relay-"
_TEMP_FILE = re.compile(rf"{re.escape(_TEMP_PREFIX)}[0-9a-f]{{16}}\.txt", re.ASCII)
_MAX_LABEL_CHARS = 64
_LONGEST_NAME = f"{'x' * _MAX_LABEL_CHARS}-20000101T000000-{'0' * 16}.txt"
_HUGE_COUNT = 10**15  # stands for any line or byte count when the longest footer is measured
_MAX_SWEEP_INTERVAL_SECONDS = 60.0
_MIN_PREVIEW_BYTES = 256
_MAX_SYMLINKS = 40
# Text is encoded, counted and written this many characters at a time: the chunk stays in the
# CPU cache between the three, which a whole-text encode of a fresh 10 MB output does not, and
# the CPU is offered to other threads (an event loop) between chunks.
_CHUNK_CHARS = 1 << 18
_COPY_BYTES = 1 << 20
_CUT_MARKER_ROOM = 256  # bytes of a capped file kept for the marker between head and tail
_SHARED_CACHE_SIZE = 32

_SEARCH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SUPPORTED = {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """What the model should see in place of an output.

    ``path`` is the file that holds the whole output, or None when nothing was written: the
    output was small enough to pass through, or saving it failed (then ``error`` says why).
    """

    text: str
    path: Path | None = None
    error: str | None = None


_MIN_COMPRESSED_CHARS = 1024  # shorter texts are not worth compressing
_COMPRESSION_LEVEL = 6


class CompressedText(DeferredText):
    """A text held zlib-compressed, rebuilt exactly on each read: how a relayed result's preview
    waits in the ledger, at a fraction of its size (the preview of a typical output compresses
    three to five times; one of repetitive lines, far more).

    Immutable and thread-safe; :meth:`render` never raises and returns the same ``str`` each
    time (a new object)."""

    __slots__ = ("_data", "_length")

    def __init__(self, data: bytes, length: int) -> None:
        self._data = data
        self._length = length

    @classmethod
    def of(cls, text: str) -> CompressedText | None:
        """``text`` compressed, or None when it is short, holds a lone surrogate, or would not
        shrink by a quarter."""
        if len(text) < _MIN_COMPRESSED_CHARS:
            return None
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        data = zlib.compress(raw, _COMPRESSION_LEVEL)
        if len(data) * 4 > len(raw) * 3:
            return None
        return cls(data, len(text))

    @property
    def length(self) -> int:
        return self._length

    @property
    def compressed_bytes(self) -> int:
        """How many bytes the compressed text takes."""
        return len(self._data)

    def render(self) -> str:
        return zlib.decompress(self._data).decode("utf-8")


class _Refused(Exception):
    """A safety rule or a limit forbids saving; the message says which, for the model."""


class OutputRelay:
    """Relays outputs over the inline limits to files and returns a bounded preview.

    Thread-safe: any number of threads (and processes sharing the directory) may relay at
    once; every file gets a unique name and appears whole, by an atomic rename. The module
    docstring gives the directory's rules. Relayed files older than
    ``relay_retention_seconds`` are removed during later relays, at most once a minute.

    Disk use: one file keeps at most ``relay_max_file_bytes`` (a larger output keeps its head
    and tail, with a marker saying how much was cut). When the directory would pass
    ``relay_max_total_bytes``, the oldest relayed files that no pending notification names are
    removed first; ``referenced_paths`` (and :meth:`add_referenced_paths`) tell which are
    named. It is called without any lock of the relay held. Without one, no file can be known
    to be unnamed, so none is removed for the budget (retention still applies). If nothing can
    be removed, the output is not saved and the preview says why.
    The total is exact for the relays of this process; other processes' files are counted
    from a scan of the directory, at least once a minute.

    With ``durability="full"`` the file and the directory are fsynced before the relay returns.

    :meth:`relay_if_large` and :class:`RelayStream` never raise for a failure to save: they
    return a head of the output that says it could not be saved, and why.

    Raises ``ValueError`` at construction if ``relay_inline_max_bytes`` cannot hold the footer
    (which names a file in ``relay_dir``) and a minimal preview.
    """

    _shared_lock: ClassVar[threading.Lock] = threading.Lock()
    _shared_cache: ClassVar[OrderedDict[tuple[object, ...], OutputRelay]] = OrderedDict()

    def __init__(
        self,
        settings: FollowupSettings | None = None,
        *,
        renderer: ReminderRenderer | None = None,
        referenced_paths: Callable[[], Collection[str | os.PathLike[str]]] | None = None,
    ) -> None:
        self.settings = settings = settings or FollowupSettings()
        self.renderer = renderer or ReminderRenderer(
            settings.template_dir, mark_untrusted_results=settings.mark_untrusted_results
        )
        self._inline_max_bytes = settings.relay_inline_max_bytes
        self._max_lines = settings.relay_max_lines
        self._durable = settings.durability == "full"
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._references_lock = threading.Lock()
        self._reference_sources: list[Callable[[], Collection[str | os.PathLike[str]]]] = []
        if referenced_paths is not None:
            self._reference_sources.append(referenced_paths)
        if self._preview_room(str(settings.relay_dir)) < _MIN_PREVIEW_BYTES:
            raise ValueError(
                f"relay_inline_max_bytes ({settings.relay_inline_max_bytes}) leaves "
                f"{self._preview_room(str(settings.relay_dir))} bytes for the preview once the relay "
                f"footer naming a file in relay_dir is added; raise relay_inline_max_bytes or "
                f"choose a shorter relay_dir"
            )

    @classmethod
    def shared(cls, settings: FollowupSettings | None = None) -> OutputRelay:
        """A relay for these settings, built once and shared by every caller (every store).

        Keyed by the settings the relay and its renderer use (every ``relay_*`` field,
        ``durability``, ``template_dir``, ``mark_untrusted_results``) and by the renderer of
        :meth:`ReminderRenderer.shared`, so an edited template gives a new relay. Its
        ``settings`` attribute is the first caller's; fields that concern neither may differ.
        It starts with no ``referenced_paths``; add them with :meth:`add_referenced_paths`.
        Thread-safe. The most recently used 32 are kept.
        """
        settings = settings or FollowupSettings()
        renderer = ReminderRenderer.shared(
            settings.template_dir, mark_untrusted_results=settings.mark_untrusted_results
        )
        key = (
            settings.relay_inline_max_bytes,
            settings.relay_max_lines,
            settings.relay_head_lines,
            settings.relay_tail_lines,
            settings.relay_dir,
            settings.relay_retention_seconds,
            settings.relay_max_file_bytes,
            settings.relay_max_total_bytes,
            settings.durability,
            renderer,
        )
        with cls._shared_lock:
            relay = cls._shared_cache.get(key)
            if relay is None:
                relay = cls._shared_cache[key] = cls(settings, renderer=renderer)
            cls._shared_cache.move_to_end(key)
            while len(cls._shared_cache) > _SHARED_CACHE_SIZE:
                cls._shared_cache.popitem(last=False)
        return relay

    def add_referenced_paths(self, source: Callable[[], Collection[str | os.PathLike[str]]]) -> Callable[[], None]:
        """Consult ``source`` too when the disk budget removes files: it returns the paths that
        pending notifications still name. Returns a function that stops consulting it.

        ``source`` is called from whichever thread relays, with no lock of the relay held. If
        it raises, that budget decision removes nothing.
        """
        with self._references_lock:
            self._reference_sources.append(source)

        def remove() -> None:
            with self._references_lock:
                if source in self._reference_sources:
                    self._reference_sources.remove(source)

        return remove

    def should_relay(self, text: str) -> bool:
        """Whether :meth:`relay_if_large` saves (or tries to save) ``text``: true if it is over
        ``relay_inline_max_bytes`` in UTF-8 or over ``relay_max_lines`` lines.

        The one size decision. O(1) for a text longer than the byte limit; otherwise it reads
        at most that many characters. Never raises.
        """
        limit = self._inline_max_bytes
        length = len(text)
        if length > limit:
            return True
        if count_lines(text) > self._max_lines:
            return True
        if length * 4 <= limit or text.isascii():
            return False
        return utf8_size(text) > limit

    def relay_if_large(self, label: str, text: str) -> RelayOutcome:
        """Return ``text`` unchanged (the same object) unless :meth:`should_relay`; otherwise
        save it to a new file and return a preview that fits the byte limit: the first and last
        lines around a count of the elided ones, then a footer with the line and byte counts,
        the file's absolute path and how to read it.

        ``label`` only decorates the file name; it is reduced to ``[A-Za-z0-9_-]`` first.
        The file and the preview are UTF-8, a lone surrogate written as U+FFFD in both.
        Blocking file I/O: from async code, call it in a worker thread.
        """
        if not self.should_relay(text):
            return RelayOutcome(text)
        try:
            with _RelayDirectory.open(self.settings.relay_dir) as directory:
                self._prepare(directory)
                file = _RelayFile(directory, self.settings.relay_max_file_bytes)
                try:
                    newlines = _write_text(file, text)
                    saved = self._keep(directory, file, label)
                except BaseException:
                    file.discard()
                    raise
        except (OSError, _Refused) as exc:
            return self._unsaved_text(text, exc)
        lines = newlines + (0 if text.endswith("\n") else 1)
        footer = self._footer(saved.path, lines, file.size, saved.cut_bytes)
        return RelayOutcome(self._with_footer(text, lines, footer), Path(saved.path))

    def open_stream(self, label: str) -> RelayStream:
        """A :class:`RelayStream` that saves an output to a new file as its bytes arrive (a
        background shell's, say) and returns the same kind of outcome as
        :meth:`relay_if_large` when closed. Never raises for a failure to save."""
        return RelayStream(self, label)

    # -- shared by relay_if_large and RelayStream ------------------------------------------

    def _footer(self, path: str, lines: int, size_bytes: int, cut_bytes: int) -> str:
        """The footer naming ``path``: the one function both the budget check and a relay use."""
        return self.renderer.render_relay_footer(
            path=Path(path), lines=lines, size_bytes=size_bytes, cut_bytes=cut_bytes
        )

    def _preview_room(self, directory: str) -> int:
        """Bytes left for a preview under the longest footer naming a file in ``directory``."""
        longest = self._footer(os.path.join(directory, _LONGEST_NAME), _HUGE_COUNT, _HUGE_COUNT, _HUGE_COUNT)
        return self._inline_max_bytes - utf8_size(longest) - 1

    def _prepare(self, directory: _RelayDirectory) -> None:
        """Refuse a directory whose resolved path leaves no room for the preview; sweep it."""
        room = self._preview_room(directory.path)
        if room < _MIN_PREVIEW_BYTES:
            raise _Refused(
                f"the relay directory's resolved path is {utf8_size(directory.path)} bytes long, "
                f"which leaves too little of relay_inline_max_bytes for a preview"
            )
        self._sweep_if_due(directory)

    def _keep(self, directory: _RelayDirectory, file: _RelayFile, label: str) -> _Saved:
        """Finish ``file``, fit it into the disk budget and give it its final name."""
        self._admit(directory, file.finish(durable=self._durable))
        name = f"{_safe_label(label)}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(8)}.txt"
        os.rename(file.name, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        file.name = name
        if self._durable:
            os.fsync(directory.fd)
        if not directory.is_still_at_its_path():
            raise _Refused("the relay directory was moved or replaced while the output was saved")
        file.keep(name)
        return _Saved(os.path.join(directory.path, name), file.cut_bytes)

    def _with_footer(self, text: str, lines: int, footer: str) -> str:
        settings = self.settings
        preview = build_preview(
            text,
            head_lines=settings.relay_head_lines,
            tail_lines=settings.relay_tail_lines,
            max_bytes=self._inline_max_bytes - utf8_size(footer) - 1,
            total_lines=lines,
        )
        return f"{preview.text}\n{footer}"

    def _unsaved_text(self, text: str, exc: Exception) -> RelayOutcome:
        lines = count_lines(text)
        return self._unsaved(text, len(text), lines, utf8_size(text), exc)

    def _unsaved(self, beginning: str, total_chars: int, lines: int, size_bytes: int, exc: Exception) -> RelayOutcome:
        """The head of an output that could not be saved (``beginning`` is at least its first
        ``relay_inline_max_bytes`` characters), with a notice saying why; no path."""
        reason = _describe(exc)
        logger.warning("could not relay an output of %d bytes to a file: %s", size_bytes, reason)
        notice = self.renderer.render_relay_unsaved(lines=lines, size_bytes=size_bytes, error=reason)
        # room for head_cap's own marker, which names two character counts
        budget = self._inline_max_bytes - utf8_size(notice) - 96
        # and the line limit too, counting the marker's line and the notice's
        line_room = max(self._max_lines - count_lines(notice) - 1, 0)
        keep = min(len(cut_to_bytes(beginning, max(budget, 0))), _end_of_first_lines(beginning, line_room))
        head = head_cap(replace_surrogates(beginning[:keep]), keep, "output", total_chars=total_chars)
        return RelayOutcome(f"{head}\n{notice}", None, reason)

    def _sweep_if_due(self, directory: _RelayDirectory) -> None:
        now = time.monotonic()
        with self._sweep_lock:
            if now < self._next_sweep:
                return
            retention = self.settings.relay_retention_seconds
            self._next_sweep = now + min(retention, _MAX_SWEEP_INTERVAL_SECONDS)
        cutoff = time.time() - retention
        for entry in directory.own_files(include_temporary=True):
            if entry.mtime < cutoff:
                directory.remove(entry.name)
        _usage_of(directory).forget()

    def _admit(self, directory: _RelayDirectory, size: int) -> None:
        """Make room for a new file of ``size`` bytes within ``relay_max_total_bytes``."""
        limit = self.settings.relay_max_total_bytes
        usage = _usage_of(directory)
        if usage.try_add(size, limit):
            return
        referenced = self._referenced_names(directory.path)
        with usage.lock:
            files = list(directory.own_files(include_temporary=False))
            total = sum(entry.size for entry in files)
            if referenced is not None:
                for entry in sorted(files, key=lambda entry: entry.mtime):
                    if total + size <= limit:
                        break
                    if entry.name not in referenced:
                        directory.remove(entry.name)
                        total -= entry.size
            fits = total + size <= limit
            usage.set(total + size if fits else total)
        if not fits:
            why = (
                "pending notifications still name them"
                if referenced is not None
                else "no referenced_paths tells which of them pending notifications no longer name"
            )
            raise _Refused(
                f"relay_max_total_bytes ({limit}) is reached: {total} bytes of saved outputs stay, as {why}, "
                f"and leave no room for this one ({size} bytes)"
            )

    def _referenced_names(self, directory: str) -> frozenset[str] | None:
        """Names of the files in ``directory`` that pending notifications name; None if that
        is unknown (no source, or one failed), and so nothing may be removed."""
        with self._references_lock:
            sources = list(self._reference_sources)
        if not sources:
            return None
        names = set()
        for source in sources:
            try:
                paths = list(source())
            except Exception:
                logger.warning("referenced_paths failed; no relayed file is removed this time", exc_info=True)
                return None
            for path in paths:
                head, name = os.path.split(os.fspath(path))
                if head == directory:
                    names.add(name)
        return frozenset(names)


class RelayStream:
    """An output saved to a relay file as it arrives, for a background shell and the like.

    Feed it bytes with :meth:`write` as they come; :attr:`lines` and :attr:`size_bytes` say how
    much arrived so far. :meth:`close` (or leaving a ``with`` block) returns a
    :class:`RelayOutcome` like :meth:`OutputRelay.relay_if_large` would for the whole output:

    - an output within both inline limits comes back whole, as text, and its file is removed;
    - otherwise the bounded preview and footer naming the file, which holds the whole output
      (or, past ``relay_max_file_bytes``, its head and tail with a marker between);
    - or, if saving failed at any point, the head and a notice saying why.

    The bytes are decoded as UTF-8, an invalid sequence becoming U+FFFD (in the file too).
    Only a bounded head and tail are kept in memory. The same directory rules, file cap and
    disk budget apply as for :meth:`OutputRelay.relay_if_large`.

    Thread-safe for one writer: :meth:`write` from one thread while others read the counts or
    close it. :meth:`write` and :meth:`close` never raise for a failure to save; writing
    anything but bytes raises ``TypeError``, writing after :meth:`close` ``ValueError``.
    :meth:`close` may be called again and returns the same outcome.
    """

    def __init__(self, relay: OutputRelay, label: str) -> None:
        settings = relay.settings
        self._relay = relay
        self._label = label
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._width = settings.relay_inline_max_bytes
        self._window = _LineWindow(settings.relay_head_lines, settings.relay_tail_lines, self._width)
        self._beginning = ""
        self._chars = 0
        self._size = 0
        self._newlines = 0
        self._ends_with_newline = False
        self._outcome: RelayOutcome | None = None
        self._failure: Exception | None = None
        self._directory: _RelayDirectory | None = None
        self._file: _RelayFile | None = None
        try:
            self._directory = _RelayDirectory.open(settings.relay_dir)
            relay._prepare(self._directory)
            self._file = _RelayFile(self._directory, settings.relay_max_file_bytes)
        except (OSError, _Refused) as exc:
            self._fail(exc)
        self._finalizer = weakref.finalize(self, _release, self._directory, self._file)

    @property
    def lines(self) -> int:
        """Lines received so far (a final line without a newline counts)."""
        with self._lock:
            return self._newlines + (1 if self._size and not self._ends_with_newline else 0)

    @property
    def size_bytes(self) -> int:
        """UTF-8 bytes received so far, after decoding (an incomplete character waits)."""
        with self._lock:
            return self._size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add ``chunk`` to the output. Never raises for a failure to save."""
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"RelayStream.write takes bytes, got {type(chunk).__name__}")
        with self._lock:
            if self._outcome is not None:
                raise ValueError("write to a closed RelayStream")
            self._take(self._decoder.decode(chunk))

    def close(self) -> RelayOutcome:
        """Finish the output and return what the model should see. Never raises."""
        with self._lock:
            if self._outcome is None:
                self._take(self._decoder.decode(b"", final=True))
                self._outcome = self._conclude()
                self._finalizer()
            return self._outcome

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _take(self, text: str) -> None:
        if not text:
            return
        data = text.encode("utf-8")
        self._size += len(data)
        self._chars += len(text)
        self._newlines += count_newlines(data)
        self._ends_with_newline = text.endswith("\n")
        self._window.feed(text)
        if len(self._beginning) <= self._width:
            self._beginning += text[: self._width + 1 - len(self._beginning)]
        if self._file is not None:
            try:
                self._file.write(data)
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        _release(self._directory, self._file)
        self._directory = self._file = None

    def _conclude(self) -> RelayOutcome:
        relay = self._relay
        lines = self._newlines + (1 if self._size and not self._ends_with_newline else 0)
        if self._chars == len(self._beginning) and not relay.should_relay(self._beginning):
            return RelayOutcome(self._beginning)
        directory, file = self._directory, self._file
        if directory is None or file is None:
            assert self._failure is not None
            return relay._unsaved(self._beginning, self._chars, lines, self._size, self._failure)
        try:
            saved = relay._keep(directory, file, self._label)
        except (OSError, _Refused) as exc:
            self._fail(exc)
            return relay._unsaved(self._beginning, self._chars, lines, self._size, exc)
        footer = relay._footer(saved.path, lines, self._size, saved.cut_bytes)
        head, tail = self._window.lines(lines)
        preview = preview_of_lines(
            head, tail, total_lines=lines, max_bytes=relay._inline_max_bytes - utf8_size(footer) - 1
        )
        return RelayOutcome(f"{preview.text}\n{footer}", Path(saved.path))


def _release(directory: _RelayDirectory | None, file: _RelayFile | None) -> None:
    """Give back what an unfinished stream holds: remove its temporary file, close the descriptors."""
    if file is not None:
        file.discard()
    if directory is not None:
        directory.close()


class _LineWindow:
    """The first ``head`` and last ``tail`` lines of a stream, each as the first ``width``
    characters of the line and its full length. Work per chunk is bounded by ``tail``, not
    by the chunk's number of lines."""

    def __init__(self, head: int, tail: int, width: int) -> None:
        self._head_count = head
        self._width = width
        self._head: list[list[str | int]] = []  # [start, chars]; the last one may be open
        self._head_open = False
        self._tail: deque[list[str | int]] = deque(maxlen=tail + 1)  # the last one is open
        self._tail_count = tail

    def feed(self, text: str) -> None:
        if len(self._head) < self._head_count or self._head_open:
            self._feed_head(text)
        self._feed_tail(text)

    def lines(self, total: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The head and tail lines to preview, for a stream of ``total`` lines."""
        head = [(str(start), int(chars)) for start, chars in self._head]
        tail = [(str(start), int(chars)) for start, chars in self._tail]
        if tail and tail[-1][1] == 0:
            tail.pop()  # after a final newline: no line there
        tail = tail[len(tail) - self._tail_count :] if self._tail_count else []
        if total <= self._head_count + self._tail_count:
            return head + tail[len(head) + len(tail) - total :], []
        return head, tail

    def _feed_head(self, text: str) -> None:
        position = 0
        while position < len(text):
            if not self._head_open:
                if len(self._head) == self._head_count:
                    return
                self._head.append(["", 0])
                self._head_open = True
            newline = text.find("\n", position)
            end = len(text) if newline < 0 else newline
            self._extend(self._head[-1], text, position, end)
            if newline < 0:
                return
            self._head_open = False
            position = newline + 1

    def _feed_tail(self, text: str) -> None:
        tail = self._tail
        if not tail:
            tail.append(["", 0])
        newlines: list[int] = []
        end = len(text)
        while len(newlines) <= self._tail_count:
            newline = text.rfind("\n", 0, end)
            if newline < 0:
                break
            newlines.append(newline)
            end = newline
        if not newlines:
            self._extend(tail[-1], text, 0, len(text))
            return
        newlines.reverse()
        if len(newlines) <= self._tail_count:  # every newline of the chunk was found
            self._extend(tail[-1], text, 0, newlines[0])
        starts = [newline + 1 for newline in newlines]
        ends = [*newlines[1:], len(text)]
        for start, stop in zip(starts, ends, strict=True):
            tail.append([text[start : min(stop, start + self._width)], stop - start])

    def _extend(self, line: list[str | int], text: str, start: int, end: int) -> None:
        shown = str(line[0])
        if len(shown) < self._width:
            line[0] = shown + text[start : min(end, start + self._width - len(shown))]
        line[1] = int(line[1]) + end - start


# -- the directory and its files -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Saved:
    path: str
    cut_bytes: int


@dataclass(frozen=True, slots=True)
class _OwnFile:
    name: str
    size: int
    mtime: float


class _RelayDirectory:
    """An open relay directory: a descriptor every file operation is relative to, and the
    resolved absolute path it was reached by. Use :meth:`open`; close it when done."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, path: Path) -> _RelayDirectory:
        """Open ``path`` by the rules of the module docstring, creating missing directories
        (mode 0700). Raises ``_Refused`` for a broken rule, ``OSError`` for the rest."""
        if not _SUPPORTED:
            raise _Refused("this platform cannot open files relative to a directory, which the relay needs")
        fd, resolved = _walk(path)
        try:
            data_fd = os.open(".", _LIST_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            status = os.fstat(data_fd)
            if status.st_uid != os.geteuid():
                raise _Refused(f"the relay directory {resolved} belongs to another user")
            if stat.S_IMODE(status.st_mode) & 0o077:
                os.fchmod(data_fd, 0o700)
        except BaseException:
            os.close(data_fd)
            raise
        return cls(data_fd, resolved)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def is_still_at_its_path(self) -> bool:
        """Whether :attr:`path` still leads to this directory."""
        try:
            named = os.stat(self.path)
        except OSError:
            return False
        here = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (here.st_dev, here.st_ino)

    def own_files(self, *, include_temporary: bool) -> Iterable[_OwnFile]:
        """The relay's files here: regular files, owned by this user, named exactly as the
        relay names them (and, if asked, its temporary files). Symlinks are never followed."""
        uid = os.geteuid()
        with os.scandir(self.fd) as entries:
            for entry in entries:
                name = entry.name
                if not (_RELAYED_FILE.fullmatch(name) or (include_temporary and _TEMP_FILE.fullmatch(name))):
                    continue
                try:
                    status = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if stat.S_ISREG(status.st_mode) and status.st_uid == uid:
                    yield _OwnFile(name, status.st_size, status.st_mtime)

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError as exc:
            logger.debug("could not remove relay file %s in %s: %s", name, self.path, exc)

    def identity(self) -> tuple[int, int]:
        status = os.fstat(self.fd)
        return status.st_dev, status.st_ino


def _walk(path: Path) -> tuple[int, str]:
    """Reach ``path`` from ``/`` one component at a time; return a search descriptor of the
    directory and its resolved path."""
    uid = os.geteuid()
    pending = list(reversed(path.parts[1:]))
    root = os.open("/", _SEARCH_FLAGS)
    chain: list[tuple[str, int, os.stat_result]] = [("", root, os.fstat(root))]
    followed = 0
    try:
        _check_owner("the directory /", chain[0][2], uid)
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(chain) > 1:
                    os.close(chain.pop()[1])
                continue
            parent_fd = chain[-1][1]
            here = "/" + "/".join([entry[0] for entry in chain[1:]] + [name])
            _check_parent(here, chain[-1][2], uid)
            try:
                fd = os.open(name, _SEARCH_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # made meanwhile: open it as found
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                pending.append(name)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                status = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if not stat.S_ISLNK(status.st_mode):
                    raise
                _check_owner(f"the symbolic link {here}", status, uid)
                followed += 1
                if followed > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                target = PurePosixPath(os.readlink(name, dir_fd=parent_fd))
                if target.is_absolute():
                    for _, stale, _ in chain[1:]:
                        os.close(stale)
                    del chain[1:]
                    pending.extend(reversed(target.parts[1:]))
                else:
                    pending.extend(reversed(target.parts))
                continue
            chain.append((name, fd, os.fstat(fd)))
            _check_owner(f"the directory {here}", chain[-1][2], uid)
        resolved = "/" + "/".join(entry[0] for entry in chain[1:])
        return os.dup(chain[-1][1]), resolved
    finally:
        for _, fd, _ in chain:
            os.close(fd)


def _check_owner(what: str, status: os.stat_result, uid: int) -> None:
    if status.st_uid not in (0, uid):
        raise _Refused(f"{what} belongs to another user")


def _check_parent(where: str, parent: os.stat_result, uid: int) -> None:
    """Refuse to look ``where`` up in a directory (of ``parent``) that another user can write
    to, unless it is sticky: then only the entry's owner (checked next) can replace it."""
    mode = stat.S_IMODE(parent.st_mode)
    others_write = mode & 0o002 or (mode & 0o020 and not _is_private_group(parent.st_gid, uid))
    if others_write and not mode & stat.S_ISVTX:
        raise _Refused(f"the directory holding {where} can be written by other users")


def _is_private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` can include no user but ``uid``: this user's primary group with
    no listed members besides the user (a user private group)."""
    import grp  # POSIX only, like the rest of the directory checks
    import pwd

    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return user.pw_gid == gid and set(group.gr_mem) <= {user.pw_name}


class _RelayFile:
    """A new private file in a relay directory, filled in order. Past ``cap`` bytes it keeps
    the first half and, in a ring, the most recent bytes; :meth:`finish` lays them out with a
    marker between, so the file never exceeds ``cap``. Until :meth:`keep`, :meth:`discard`
    removes it."""

    def __init__(self, directory: _RelayDirectory, cap: int) -> None:
        self._directory = directory
        self.name = _temporary_name()
        self._fd = os.open(self.name, _NEW_FILE_FLAGS, 0o600, dir_fd=directory.fd)
        self._cap = cap
        self._head = cap // 2
        self._ring = cap - self._head - _CUT_MARKER_ROOM
        self._head_end = self._head  # where the kept head ends, at a character boundary
        self._after_head = 0  # bytes received after the head, once cutting
        self._cutting = False
        self._kept = False
        self.size = 0  # bytes received
        self.stored_bytes = 0  # the file's size, once finished
        self.cut_bytes = 0  # bytes of the output the file leaves out

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if not self._cutting:
            if self.size + len(view) <= self._cap:
                _write_all(self._fd, view)
                self.size += len(view)
                return
            view = self._start_cutting(view)
        self.size += len(view)
        ring = self._ring
        if len(view) > ring:
            self._after_head += len(view) - ring
            view = view[len(view) - ring :]
        position = self._after_head % ring
        first = min(len(view), ring - position)
        _pwrite_all(self._fd, view[:first], self._head + position)
        if first < len(view):
            _pwrite_all(self._fd, view[first:], self._head)
        self._after_head += len(view)

    def _start_cutting(self, view: memoryview) -> memoryview:
        """Switch to keeping head and ring; returns the part of ``view`` not yet stored."""
        head = self._head
        if self.size < head:
            take = head - self.size
            _write_all(self._fd, view[:take])
            self.size += take
            view = view[take:]
        stored_after = self.size - head
        following = os.pread(self._fd, 1, head) if stored_after else bytes(view[:1])
        self._head_end = head - _split_character_length(os.pread(self._fd, 3, head - 3), following)
        if stored_after > self._ring:  # the last few stored bytes belong at the ring's start
            _pwrite_all(self._fd, os.pread(self._fd, stored_after - self._ring, head + self._ring), head)
        self._after_head = stored_after
        self._cutting = True
        return view

    def finish(self, *, durable: bool) -> int:
        """Complete the file; returns its size in bytes."""
        if self._cutting:
            self._lay_out_cut()
        else:
            self.stored_bytes = self.size
        if durable:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        return self.stored_bytes

    def _lay_out_cut(self) -> None:
        """Replace the file by its head, a marker, and the ring's bytes in order."""
        directory, head, ring = self._directory, self._head, self._ring
        position = self._after_head % ring  # the oldest byte in the ring
        start = self._ring_read(position, 3)
        skip = len(start) - len(start.lstrip(_CONTINUATION_BYTES))  # begin on a whole character
        oldest = position + skip
        if oldest <= ring:
            tail = [(head + oldest, head + ring), (head, head + position)]
        else:
            tail = [(head + oldest - ring, head + position)]
        self.cut_bytes = self.size - self._head_end - (ring - skip)
        marker = (
            f"\n[... {self.cut_bytes} bytes cut here: the output was larger than relay_max_file_bytes "
            f"({self._cap}), so this file keeps its first {self._head_end} and last {ring - skip} bytes ...]\n"
        ).encode("ascii")
        name = _temporary_name()
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=directory.fd)
        try:
            _copy(self._fd, fd, [(0, self._head_end)])
            _write_all(fd, marker)
            _copy(self._fd, fd, tail)
        except BaseException:
            os.close(fd)
            directory.remove(name)
            raise
        os.close(self._fd)
        directory.remove(self.name)
        self._fd, self.name = fd, name
        self.stored_bytes = self._head_end + len(marker) + ring - skip

    def _ring_read(self, position: int, count: int) -> bytes:
        first = os.pread(self._fd, min(count, self._ring - position), self._head + position)
        return first + os.pread(self._fd, count - len(first), self._head) if len(first) < count else first

    def keep(self, name: str) -> None:
        """The file was renamed to ``name`` and is the relay's now: no longer discarded."""
        self.name = name
        self._kept = True

    def discard(self) -> None:
        """Close the file and, unless kept, remove it. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._kept and self._directory.fd >= 0:
            self._directory.remove(self.name)
            self._kept = True  # nothing left to remove


_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


def _temporary_name() -> str:
    return f"{_TEMP_PREFIX}{secrets.token_hex(8)}.txt"


def _split_character_length(before: bytes, following: bytes) -> int:
    """How many of the bytes ``before`` a cut must give up so as not to split a UTF-8
    character, when ``following`` (one byte) comes right after them."""
    if not following or following[0] & 0xC0 != 0x80:
        return 0
    back = 0
    for byte in reversed(before):
        back += 1
        if byte & 0xC0 != 0x80:
            return back
    return back


def _copy(source: int, target: int, segments: Iterable[tuple[int, int]]) -> None:
    """Append the byte ranges ``segments`` of ``source`` to ``target``."""
    for begin, end in segments:
        while begin < end:
            data = os.pread(source, min(_COPY_BYTES, end - begin), begin)
            if not data:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            _write_all(target, data)
            begin += len(data)


class _Usage:
    """What the relay's files in one directory add up to, as far as this process knows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._bytes: int | None = None

    def try_add(self, size: int, limit: int) -> bool:
        with self.lock:
            if self._bytes is None or self._bytes + size > limit:
                return False
            self._bytes += size
            return True

    def set(self, total: int) -> None:
        self._bytes = total  # the caller holds the lock

    def forget(self) -> None:
        with self.lock:
            self._bytes = None


_usage_lock = threading.Lock()
_usage_by_directory: dict[tuple[int, int], _Usage] = {}


def _usage_of(directory: _RelayDirectory) -> _Usage:
    key = directory.identity()
    with _usage_lock:
        usage = _usage_by_directory.get(key)
        if usage is None:
            usage = _usage_by_directory[key] = _Usage()
        return usage


def _write_text(file: _RelayFile, text: str) -> int:
    """Write ``text`` as UTF-8 (lone surrogates as U+FFFD); returns its newline count."""
    newlines = 0
    for start in range(0, len(text), _CHUNK_CHARS):
        chunk = text[start : start + _CHUNK_CHARS]
        try:
            data = chunk.encode("utf-8")
        except UnicodeEncodeError:
            data = replace_surrogates(chunk).encode("utf-8")
        newlines += count_newlines(data)
        file.write(data)
        let_others_run()
    return newlines


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _end_of_first_lines(text: str, count: int) -> int:
    """The length of the first ``count`` lines of ``text``, newlines included."""
    end = 0
    for _ in range(count):
        newline = text.find("\n", end)
        if newline < 0:
            return len(text)
        end = newline + 1
    return end


def _safe_label(label: str) -> str:
    safe = _UNSAFE_LABEL_CHARS.sub("_", str(label)).strip("_-")[:_MAX_LABEL_CHARS]
    return safe or "output"


def _describe(exc: Exception) -> str:
    """The reason saving failed, without naming a file (a temporary file may not exist)."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} ({code})" if code else exc.strerror
    if isinstance(exc, _Refused):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
