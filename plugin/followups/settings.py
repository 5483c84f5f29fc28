"""``FollowupSettings``: every knob of the plugin, validated once, with the reference defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FollowupSettings", "default_relay_dir"]

MIB = 1024 * 1024
_NUMBER_FIELDS = (
    "capacity",
    "max_concurrent",
    "max_error_chars",
    "relay_inline_max_bytes",
    "relay_max_lines",
    "relay_head_lines",
    "relay_tail_lines",
    "relay_retention_seconds",
    "reminder_budget_chars",
    "relay_max_file_bytes",
    "relay_max_total_bytes",
    "max_pending",
    "max_concurrent_total",
    "delivery_lease_seconds",
    "stall_after_seconds",
    "inbox_max_messages",
    "sqlite_busy_timeout_seconds",
    "worker_ttl_seconds",
    "redis_timeout_seconds",
)


def default_relay_dir() -> Path:
    """The private per-user directory that relayed outputs go to by default.

    ``$XDG_CACHE_HOME/followups/relay`` (or ``~/.cache/followups/relay``) on POSIX systems,
    ``~/Library/Caches/followups/relay`` on macOS and ``%LOCALAPPDATA%\\followups\\relay`` on
    Windows. The relay creates it with mode 0700 on first use.
    """
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "followups" / "relay"


class FollowupSettings(BaseModel):
    """Limits and locations for the store, the output relay and the reminders.

    Immutable once built. An invalid value raises :class:`pydantic.ValidationError` at
    construction, and the message names the field: a number out of range or given as a
    boolean, a path with a NUL character or a ``~user`` that does not exist. A relative
    ``relay_dir`` is made absolute against the working directory at construction.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    capacity: int = Field(default=32, ge=1, description="Task records kept before the oldest is evicted.")
    max_concurrent: int = Field(default=4, ge=1, description="Subagents that may run at once.")
    max_error_chars: int = Field(
        default=3000, ge=1, description="Error and cancel texts are cut to this many characters."
    )
    relay_inline_max_bytes: int = Field(
        default=8192,
        ge=1024,
        description="Outputs larger than this are relayed to a file; also the preview's byte budget.",
    )
    relay_max_lines: int = Field(default=200, ge=1, description="Outputs with more lines are relayed.")
    relay_head_lines: int = Field(default=50, ge=0, description="Lines the preview keeps from the start.")
    relay_tail_lines: int = Field(default=50, ge=0, description="Lines the preview keeps from the end.")
    relay_dir: Path = Field(
        default_factory=default_relay_dir, description="Where relayed outputs are written."
    )
    relay_retention_seconds: float = Field(
        default=86400, gt=0, description="Relayed files older than this are removed by later relays."
    )
    template_dir: Path | None = Field(
        default=None, description="A directory whose templates override the defaults by name."
    )
    reminder_budget_chars: int = Field(
        default=32000, ge=256, description="Most characters one reminder may carry; the rest waits."
    )
    relay_max_file_bytes: int = Field(
        default=256 * MIB,
        ge=64 * 1024,
        description="A relayed file keeps at most this many bytes: the output's head and tail.",
    )
    relay_max_total_bytes: int = Field(
        default=1024 * MIB,
        ge=64 * 1024,
        description="Relayed files in relay_dir stay within this total; the oldest unreferenced go first.",
    )
    durability: Literal["normal", "full"] = Field(
        default="normal",
        description=(
            '"full" fsyncs each relayed file and relay_dir before the relay returns, and runs a SQLite '
            "store with synchronous=FULL (survives a power loss); \"normal\" (synchronous=NORMAL in WAL) "
            "survives a process crash."
        ),
    )
    mark_untrusted_results: bool = Field(
        default=False,
        description="Add a line to each reminder saying its results are untrusted data, not instructions.",
    )

    max_concurrent_total: int | None = Field(
        default=None,
        ge=1,
        description="Subagents that may run at once across every session of the store (None: no such cap).",
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        description="Notifications a session may hold undelivered; past it, new tasks are refused.",
    )
    delivery_lease_seconds: float = Field(
        default=600,
        gt=0,
        description="How long a taken reminder stays leased before its notifications are pending again.",
    )
    stall_after_seconds: float = Field(
        default=300, gt=0, description="A running task that reported nothing for this long shows as stalled."
    )
    inbox_max_messages: int = Field(
        default=256, ge=1, description="Unread messages a running subagent's inbox may hold."
    )

    # -- the durable store --
    store_url: str | None = Field(
        default=None,
        description=(
            "The ledger BackgroundStore.open uses without a URL: memory://, sqlite:///relative.db or "
            "sqlite:////absolute/path.db (None: $FOLLOWUPS_STORE_URL, else memory://)."
        ),
    )
    sqlite_busy_timeout_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a SQLite store waits for another process's write lock before an operation fails.",
    )

    # -- workers sharing a Redis store (redis://) --
    worker_ttl_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A worker whose heartbeat is this old is gone: its live tasks are orphaned (heartbeat every third).",
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a Redis call may take before the store counts as unavailable."
    )
    redis_event_stream_length: int = Field(
        default=1000,
        ge=1,
        description=(
            "Events each session's Redis stream keeps (about: trimmed with MAXLEN ~) for subscribers "
            "whose connection was away; one that missed more sees Lagged."
        ),
    )

    @field_validator(*_NUMBER_FIELDS, mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, not the boolean {value!r}")
        return value

    @field_validator("relay_dir", "template_dir", mode="before")
    @classmethod
    def _no_nul_character(cls, value: Any) -> Any:
        if isinstance(value, str | os.PathLike) and "\x00" in os.fsdecode(value):
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("relay_dir")
    @classmethod
    def _relay_dir_is_made_absolute(cls, value: Path) -> Path:
        """A relative path resolves against the working directory of the construction."""
        value = _expand_user(value)
        return value if value.is_absolute() else Path(os.path.abspath(value))

    @field_validator("template_dir")
    @classmethod
    def _template_dir_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = _expand_user(value)
        if not value.is_dir():
            raise ValueError(f"must be an existing directory, got {str(value)!r}")
        return value.resolve()

    @model_validator(mode="after")
    def _limits_agree(self) -> Self:
        if self.max_concurrent > self.capacity:
            raise ValueError(
                f"max_concurrent ({self.max_concurrent}) must not exceed capacity "
                f"({self.capacity}): running tasks would be evicted to make room"
            )
        if self.relay_head_lines + self.relay_tail_lines > self.relay_max_lines:
            raise ValueError(
                f"relay_head_lines + relay_tail_lines ({self.relay_head_lines} + "
                f"{self.relay_tail_lines}) must not exceed relay_max_lines ({self.relay_max_lines})"
            )
        if self.relay_max_file_bytes < self.relay_inline_max_bytes:
            raise ValueError(
                f"relay_max_file_bytes ({self.relay_max_file_bytes}) must not be smaller than "
                f"relay_inline_max_bytes ({self.relay_inline_max_bytes})"
            )
        if self.relay_max_total_bytes < self.relay_max_file_bytes:
            raise ValueError(
                f"relay_max_total_bytes ({self.relay_max_total_bytes}) must not be smaller than "
                f"relay_max_file_bytes ({self.relay_max_file_bytes}): one file must fit"
            )
        return self


def _expand_user(path: Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; ``ValueError`` if that is impossible."""
    try:
        return path.expanduser()
    except RuntimeError as exc:  # no such user, or no home directory to expand "~" to
        raise ValueError(f"cannot expand {str(path)!r}: {exc}") from None
