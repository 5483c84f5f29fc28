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
        self._check_footer_fits()

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
        lines = count_lines(text)
        if lines <= settings.relay_max_lines and len(text) <= limit:
            if len(text) * 4 <= limit:
                return RelayOutcome(text)
            data = text.encode("utf-8", "replace")
            if len(data) <= limit:
                return RelayOutcome(text)
        else:
            data = text.encode("utf-8", "replace")
        try:
            path = self._write(label, data)
        except Exception as exc:
            logger.warning("could not relay %d bytes of %r output to a file: %s", len(data), label, exc)
            return self._unsaved(text, lines, len(data), exc)
        footer = self.renderer.render_relay_footer(path=path, lines=lines, size_bytes=len(data))
        return RelayOutcome(self._with_footer(text, footer), path)

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

    def _with_footer(self, text: str, footer: str) -> str:
        settings = self.settings
        budget = settings.relay_inline_max_bytes - len(footer.encode("utf-8", "replace")) - 1
        preview = build_preview(
            text,
            head_lines=settings.relay_head_lines,
            tail_lines=settings.relay_tail_lines,
            max_bytes=budget,
        )
        return f"{preview.text}\n{footer}"

    def _unsaved(self, text: str, lines: int, size_bytes: int, exc: Exception) -> RelayOutcome:
        reason = _describe(exc)
        notice = self.renderer.render_relay_unsaved(lines=lines, size_bytes=size_bytes, error=reason)
        # room for head_cap's own marker, which names two character counts
        budget = self.settings.relay_inline_max_bytes - len(notice.encode("utf-8", "replace")) - 96
        head = head_cap(text, len(cut_to_bytes(text, max(budget, 0))), "output")
        return RelayOutcome(f"{head}\n{notice}", None, reason)

    def _write(self, label: str, data: bytes) -> Path:
        directory = self._prepare_directory()
        self._sweep_if_due(directory)
        final = directory / f"{_safe_label(label)}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(8)}.txt"
        if final.parent != directory:
            raise ValueError(f"relay file name escapes the relay directory: {final}")
        fd, temporary = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".txt", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, final)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass  # it was never created or is already gone; the original error matters
            raise
        return final

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


def _safe_label(label: str) -> str:
    safe = _UNSAFE_LABEL_CHARS.sub("_", str(label)).strip("_-")[:_MAX_LABEL_CHARS]
    return safe or "output"


def _describe(exc: Exception) -> str:
    """The reason a write failed, without naming a path (a temporary file may not exist)."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} ({code})" if code else exc.strerror
    return f"{type(exc).__name__}: {exc}"
