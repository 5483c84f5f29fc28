from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from followups import FollowupSettings, default_relay_dir


def test_defaults_are_the_reference_design(relay_dir: Path) -> None:
    settings = FollowupSettings(relay_dir=relay_dir)
    assert settings.capacity == 32
    assert settings.max_concurrent == 4
    assert settings.max_error_chars == 3000
    assert settings.relay_inline_max_bytes == 8192
    assert settings.relay_max_lines == 200
    assert settings.relay_head_lines == 50
    assert settings.relay_tail_lines == 50
    assert settings.relay_retention_seconds == 86400
    assert settings.template_dir is None
    assert settings.reminder_budget_chars == 32000
    assert settings.relay_max_file_bytes == 256 * 1024 * 1024
    assert settings.relay_max_total_bytes == 1024 * 1024 * 1024
    assert settings.durability == "normal"
    assert settings.mark_untrusted_results is False


def test_default_relay_dir_is_private_to_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    relay_dir = FollowupSettings().relay_dir
    assert relay_dir == default_relay_dir()
    assert relay_dir.is_absolute()
    assert relay_dir.is_relative_to(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("capacity", 0),
        ("max_concurrent", 0),
        ("max_error_chars", -1),
        ("relay_inline_max_bytes", 10),
        ("relay_max_lines", 0),
        ("relay_head_lines", -1),
        ("relay_retention_seconds", 0),
        ("reminder_budget_chars", 1),
        ("capacity", "many"),
        ("template_dir", "/no/such/template/dir"),
        ("relay_max_file_bytes", 1000),
        ("relay_max_total_bytes", 1000),
        ("durability", "sometimes"),
    ],
)
def test_invalid_value_fails_at_construction_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        FollowupSettings(**{field: value})
    assert field in str(excinfo.value)


def test_unknown_field_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="capacty"):
        FollowupSettings(capacty=10)


def test_max_concurrent_above_capacity_is_rejected() -> None:
    with pytest.raises(ValidationError, match="max_concurrent"):
        FollowupSettings(capacity=2, max_concurrent=3)


def test_preview_lines_must_fit_in_max_lines() -> None:
    with pytest.raises(ValidationError, match="relay_head_lines"):
        FollowupSettings(relay_max_lines=10, relay_head_lines=6, relay_tail_lines=6)


def test_settings_are_immutable(settings: FollowupSettings) -> None:
    with pytest.raises(ValidationError):
        settings.capacity = 3  # type: ignore[misc]


def test_template_dir_must_be_a_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "followup.j2"
    a_file.write_text("x")
    with pytest.raises(ValidationError, match="template_dir"):
        FollowupSettings(template_dir=a_file)
    assert FollowupSettings(template_dir=tmp_path).template_dir == tmp_path.resolve()


# -- bad values that used to pass or raise the wrong error ---------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "capacity",
        "max_concurrent",
        "max_error_chars",
        "relay_max_lines",
        "relay_head_lines",
        "relay_tail_lines",
        "relay_retention_seconds",
        "relay_max_file_bytes",
    ],
)
def test_a_boolean_is_not_taken_for_a_number(field: str) -> None:
    with pytest.raises(ValidationError, match=field) as excinfo:
        FollowupSettings(**{field: True})
    assert "boolean" in str(excinfo.value)


@pytest.mark.parametrize("field", ["relay_dir", "template_dir"])
def test_an_unknown_users_home_fails_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError, match=field) as excinfo:
        FollowupSettings(**{field: "~no-such-user-of-followups/relay"})
    assert "cannot expand" in str(excinfo.value)


@pytest.mark.parametrize("field", ["relay_dir", "template_dir"])
def test_a_nul_character_in_a_path_fails_naming_the_field(field: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=field) as excinfo:
        FollowupSettings(**{field: f"{tmp_path}/re\x00lay"})
    assert "NUL" in str(excinfo.value)


def test_a_relative_relay_dir_resolves_against_the_working_directory_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = FollowupSettings(relay_dir="relative/dir")
    monkeypatch.chdir("/")
    assert settings.relay_dir == tmp_path / "relative" / "dir"
    assert settings.relay_dir.is_absolute()


def test_the_disk_budget_must_hold_one_file() -> None:
    with pytest.raises(ValidationError, match="relay_max_total_bytes"):
        FollowupSettings(relay_max_file_bytes=2 * 1024 * 1024, relay_max_total_bytes=1024 * 1024)


def test_a_file_cap_below_the_inline_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="relay_max_file_bytes"):
        FollowupSettings(relay_inline_max_bytes=128 * 1024, relay_max_file_bytes=64 * 1024)
