"""``FollowupSettings``: every knob of the plugin, validated once, with the reference defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FollowupSettings", "default_relay_dir"]


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
    construction, and the message names the field.
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

    @field_validator("relay_dir")
    @classmethod
    def _relay_dir_is_absolute(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @field_validator("template_dir")
    @classmethod
    def _template_dir_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
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
        return self
