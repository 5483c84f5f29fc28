"""``OutputRelay``: a large task output goes to a private file, the model gets a bounded preview."""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .reminders import ReminderRenderer
from .settings import FollowupSettings
from .truncation import build_preview, count_lines, cut_to_bytes, head_cap

__all__ = ["OutputRelay", "RelayOutcome"]

logger = logging.getLogger("followups.relay")

_UNSAFE_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_RELAYED_FILE = re.compile(r"^[A-Za-z0-9_-]+-\d{8}T\d{6}-[0-9a-f]{16}\.txt$")
_TEMP_PREFIX = ".tmp-relay-"
_MAX_LABEL_CHARS = 64
_MAX_SWEEP_INTERVAL_SECONDS = 60.0
_MIN_PREVIEW_BYTES = 256
_OVERLAP_BYTES = 1 << 20  # below this, a thread costs more than the overlap saves


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """What the model should see in place of an output.

    ``path`` is the file that holds the whole output, or None when nothing was written: the
    output was small enough to pass through, or saving it failed (then ``error`` says why).
    """

    text: str
    path: Path | None = None
    error: str | None = None


class OutputRelay:
    """Relays outputs over the inline limits to files and returns a bounded preview.

    Thread-safe: any number of threads (and processes sharing the directory) may relay at
    once; every file gets a unique name and appears whole, by an atomic rename. Files are
    mode 0600 in a 0700 directory (an existing directory of the caller's is tightened to 0700;
    one owned by another user is refused). Relayed files older than
    ``relay_retention_seconds`` are removed during later relays, at most once a minute; only
    files with the relay's own naming pattern are ever removed.

    :meth:`relay_if_large` never raises: when the file cannot be written it returns a
    head-capped text that says the output could not be saved, and why.

    Raises ``ValueError`` at construction if ``relay_inline_max_bytes`` cannot hold the footer
    (which names a file in ``relay_dir``) and a minimal preview.
    """

    def __init__(self, settings: FollowupSettings | None = None, *, renderer: ReminderRenderer | None = None):
        self.settings = settings or FollowupSettings()
        self.renderer = renderer or ReminderRenderer(self.settings.template_dir)
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._directory: Path | None = None
        self._check_footer_fits()

    def should_relay(self, text: str) -> bool:
        """True exactly when :meth:`relay_if_large` relays ``text`` (writes it, or tries to):
        it is over the inline byte limit in UTF-8, or has more than ``relay_max_lines`` lines.
        O(1) for a text longer than the byte limit."""
        limit = self.settings.relay_inline_max_bytes
        if len(text) > limit:
            return True
        if count_lines(text) > self.settings.relay_max_lines:
            return True
        return len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit

    def relay_if_large(self, label: str, text: str) -> RelayOutcome:
        """Return ``text`` unchanged if it is within both inline limits (bytes and lines);
        otherwise save it whole to a new file and return a preview that fits the byte limit:
        the first and last lines around a count of the elided ones, then a footer with the line
        and byte counts, the file's absolute path and how to read it.

        ``label`` only decorates the file name; it is reduced to ``[A-Za-z0-9_-]`` first.
        Blocking file I/O: from async code, call it in a worker thread if outputs are huge.
        """
        settings = self.settings
        limit = settings.relay_inline_max_bytes
        # A text longer than the byte limit is relayed whatever its line count, so its lines
        # are counted later, while the file is written.
        known_lines = count_lines(text) if len(text) <= limit else None
        if known_lines is not None and known_lines <= settings.relay_max_lines:
            if len(text) * 4 <= limit or len(text.encode("utf-8", "replace")) <= limit:
                return RelayOutcome(text)
        data = text.encode("utf-8", "replace")
        try:
            path, counted = self._write(label, data, count_while_writing=text if known_lines is None else None)
        except Exception as exc:
            logger.warning("could not relay %d bytes of %r output to a file: %s", len(data), label, exc)
            return self._unsaved(text, count_lines(text) if known_lines is None else known_lines, len(data), exc)
        lines = known_lines if known_lines is not None else counted
        if lines is None:  # a text over the byte limit but too small to count while writing
            lines = count_lines(text)
        footer = self.renderer.render_relay_footer(path=path, lines=lines, size_bytes=len(data))
        return RelayOutcome(self._with_footer(text, footer, lines), path)

    def _check_footer_fits(self) -> None:
        """Refuse settings whose footer (with the longest file name) leaves no room for a preview."""
        longest = self.settings.relay_dir / f"{'x' * _MAX_LABEL_CHARS}-20000101T000000-{'0' * 16}.txt"
        footer = self.renderer.render_relay_footer(path=longest, lines=10**9, size_bytes=10**12)
        room = self.settings.relay_inline_max_bytes - len(footer.encode("utf-8", "replace"))
        if room < _MIN_PREVIEW_BYTES:
            raise ValueError(
                f"relay_inline_max_bytes ({self.settings.relay_inline_max_bytes}) leaves {room} bytes "
                f"for the preview once the relay footer naming a file in relay_dir is added; "
                f"raise relay_inline_max_bytes or choose a shorter relay_dir"
            )

    def _with_footer(self, text: str, footer: str, lines: int) -> str:
        settings = self.settings
        budget = settings.relay_inline_max_bytes - len(footer.encode("utf-8", "replace")) - 1
        preview = build_preview(
            text,
            head_lines=settings.relay_head_lines,
            tail_lines=settings.relay_tail_lines,
            max_bytes=budget,
            total_lines=lines,
        )
        return f"{preview.text}\n{footer}"

    def _unsaved(self, text: str, lines: int, size_bytes: int, exc: Exception) -> RelayOutcome:
        reason = _describe(exc)
        notice = self.renderer.render_relay_unsaved(lines=lines, size_bytes=size_bytes, error=reason)
        # room for head_cap's own marker, which names two character counts
        budget = self.settings.relay_inline_max_bytes - len(notice.encode("utf-8", "replace")) - 96
        # and the line limit too, counting the marker's line and the notice's
        line_room = max(self.settings.relay_max_lines - count_lines(notice) - 1, 0)
        keep = min(len(cut_to_bytes(text, max(budget, 0))), _end_of_first_lines(text, line_room))
        return RelayOutcome(f"{head_cap(text, keep, 'output')}\n{notice}", None, reason)

    def _write(self, label: str, data: bytes, *, count_while_writing: str | None) -> tuple[Path, int | None]:
        """Save ``data`` to a new file. Returns its path and, for a large ``data``, the line
        count of ``count_while_writing``, taken while the write runs (None otherwise)."""
        try:
            return self._write_in(self._prepared_directory(), label, data, count_while_writing)
        except FileNotFoundError:
            self._directory = None  # removed since it was prepared: prepare it again, once
            return self._write_in(self._prepared_directory(), label, data, count_while_writing)

    def _write_in(
        self, directory: Path, label: str, data: bytes, count_while_writing: str | None
    ) -> tuple[Path, int | None]:
        self._sweep_if_due(directory)
        final = directory / f"{_safe_label(label)}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(8)}.txt"
        if final.parent != directory:
            raise ValueError(f"relay file name escapes the relay directory: {final}")
        fd, temporary = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".txt", dir=directory)
        lines = None
        try:
            try:
                if count_while_writing is not None and len(data) >= _OVERLAP_BYTES:
                    writer = _BackgroundWrite(fd, data)
                    try:
                        lines = count_lines(count_while_writing)
                    finally:
                        writer.join()
                else:
                    _write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, final)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass  # it was never created or is already gone; the original error matters
            raise
        return final, lines

    def _prepared_directory(self) -> Path:
        """The relay directory, created and checked on first use (and after it vanished)."""
        directory = self._directory
        if directory is None:
            directory = self._directory = self._prepare_directory()
        return directory

    def _prepare_directory(self) -> Path:
        directory = self.settings.relay_dir
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
        if hasattr(os, "getuid") and status.st_uid != os.getuid():
            raise PermissionError(errno.EACCES, "relay directory belongs to another user")
        if status.st_mode & 0o077:
            directory.chmod(0o700)
        return directory.resolve()

    def _sweep_if_due(self, directory: Path) -> None:
        now = time.monotonic()
        with self._sweep_lock:
            if now < self._next_sweep:
                return
            retention = self.settings.relay_retention_seconds
            self._next_sweep = now + min(retention, _MAX_SWEEP_INTERVAL_SECONDS)
        cutoff = time.time() - retention
        with os.scandir(directory) as entries:
            for entry in entries:
                if not (_RELAYED_FILE.match(entry.name) or entry.name.startswith(_TEMP_PREFIX)):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError as exc:
                    logger.debug("could not remove expired relay file %s: %s", entry.path, exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _BackgroundWrite:
    """Writes a buffer to a file descriptor on a worker thread.

    The worker holds the GIL only to enter the ``write`` system call, so the calling thread
    can run GIL-bound work (counting lines) meanwhile: on two cores the two overlap instead of
    adding up. The constructor returns once the worker is about to write; :meth:`join` waits
    for the write and re-raises its error.
    """

    def __init__(self, fd: int, data: bytes) -> None:
        self._error: BaseException | None = None
        self._writing = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fd, data), name="followups-relay-write")
        self._thread.start()
        self._writing.wait()

    def _run(self, fd: int, data: bytes) -> None:
        self._writing.set()
        try:
            _write_all(fd, data)
        except BaseException as exc:
            self._error = exc

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


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
    """The reason a write failed, without naming a path (a temporary file may not exist)."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} ({code})" if code else exc.strerror
    return f"{type(exc).__name__}: {exc}"
