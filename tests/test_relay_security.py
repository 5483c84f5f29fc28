"""The relay directory's rules against a hostile file system: symlinks, swapped paths, writable
parents, foreign owners, and retention that removes only the relay's own files.

Tests that chown files to another user need root (CI runs as root); elsewhere they skip."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

import followups.relay as relay_module
from followups.relay import OutputRelay, RelayOutcome
from followups.settings import FollowupSettings

OTHER_UID = 4242  # any uid but ours and root's; it need not exist
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give files to another user"
)
BIG = "".join(f"output line {i:05d}\n" for i in range(1000))


def relay_into(relay_dir: Path, **overrides: object) -> OutputRelay:
    return OutputRelay(FollowupSettings(relay_dir=relay_dir, **overrides))


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def assert_refused(outcome: RelayOutcome, reason: str) -> None:
    assert outcome.path is None, f"written to {outcome.path}"
    assert outcome.error is not None and reason in outcome.error, outcome.error
    assert "could not be saved" in outcome.text and reason in outcome.text
    assert outcome.text.startswith(BIG[:100])


def backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


# -- symlinks and swapped paths ----------------------------------------------------------------


@needs_root
def test_a_relay_dir_symlink_owned_by_another_user_is_not_followed(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    link = tmp_path / "relay"
    link.symlink_to(ours)
    os.lchown(link, OTHER_UID, OTHER_UID)

    outcome = relay_into(link).relay_if_large("task", BIG)

    assert_refused(outcome, "belongs to another user")
    assert files_in(ours) == []
    assert stat.S_IMODE(ours.stat().st_mode) == 0o755, "a refused directory must not be chmodded"


def test_a_relay_dir_symlink_of_our_own_is_followed_and_the_preview_names_the_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "relay").symlink_to(real)

    outcome = relay_into(tmp_path / "relay").relay_if_large("task", BIG)

    assert outcome.path is not None and outcome.path.parent == real
    assert str(outcome.path) in outcome.text
    assert outcome.path.read_text(encoding="utf-8") == BIG


@needs_root
def test_a_relay_dir_swapped_after_first_use_for_a_symlink_to_another_users_directory_is_refused(
    tmp_path: Path,
) -> None:
    relay_dir = tmp_path / "relay"
    relay = relay_into(relay_dir)
    assert relay.relay_if_large("task", BIG).path is not None
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, OTHER_UID, OTHER_UID)
    relay_dir.rename(tmp_path / "relay.old")
    relay_dir.symlink_to(foreign)

    outcome = relay.relay_if_large("task", BIG)

    assert_refused(outcome, "belongs to another user")
    assert files_in(foreign) == []


def test_a_directory_swapped_while_a_stream_writes_gets_no_file_and_names_none(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    relay = relay_into(relay_dir)
    stream = relay.open_stream("shell")
    stream.write(BIG.encode())
    relay_dir.rename(tmp_path / "moved")
    relay_dir.symlink_to(elsewhere)
    stream.write(BIG.encode())

    outcome = stream.close()

    assert outcome.path is None
    assert outcome.error is not None and "moved or replaced" in outcome.error
    assert files_in(elsewhere) == [], "the write followed the swapped path"
    assert files_in(tmp_path / "moved") == [], "the half-written file must be removed"


def test_a_directory_swapped_during_a_relay_receives_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay_dir = tmp_path / "relay"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    relay = relay_into(relay_dir)
    relay.relay_if_large("warm-up", BIG)
    real_count = relay_module.count_newlines

    def swap_then_count(data: bytes) -> int:  # runs between opening the file and writing it
        if relay_dir.is_dir() and not relay_dir.is_symlink():
            relay_dir.rename(tmp_path / "moved")
            relay_dir.symlink_to(elsewhere)
        return real_count(data)

    monkeypatch.setattr(relay_module, "count_newlines", swap_then_count, raising=False)
    outcome = relay.relay_if_large("task", BIG)

    assert outcome.path is None and outcome.error is not None
    assert files_in(elsewhere) == []


# -- who may write to the directory and its parents --------------------------------------------


def test_a_relay_dir_whose_parent_other_users_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    outcome = relay_into(shared / "relay").relay_if_large("task", BIG)

    assert_refused(outcome, "can be written by other users")
    assert files_in(shared) == [], "nothing may be created under a parent others can change"


def test_a_relay_dir_in_a_sticky_world_writable_parent_is_ours_to_use(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)

    outcome = relay_into(sticky / "relay").relay_if_large("task", BIG)

    assert outcome.path is not None and outcome.path.read_text(encoding="utf-8") == BIG


@needs_root
def test_a_relay_dir_under_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    (theirs / "relay").mkdir(mode=0o700)

    assert_refused(relay_into(theirs / "relay").relay_if_large("task", BIG), "belongs to another user")


@needs_root
def test_a_relay_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    os.chown(relay_dir, OTHER_UID, OTHER_UID)

    assert_refused(relay_into(relay_dir).relay_if_large("task", BIG), "belongs to another user")
    assert files_in(relay_dir) == []


@needs_root
def test_ownership_is_checked_at_every_relay_not_once(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay = relay_into(relay_dir)
    assert relay.relay_if_large("task", BIG).path is not None
    os.chown(relay_dir, OTHER_UID, OTHER_UID)

    assert_refused(relay.relay_if_large("task", BIG), "belongs to another user")


def test_the_relay_dir_becoming_writable_by_others_is_tightened_at_the_next_relay(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay = relay_into(relay_dir)
    relay.relay_if_large("task", BIG)
    relay_dir.chmod(0o777)

    assert relay.relay_if_large("task", BIG).path is not None
    assert stat.S_IMODE(relay_dir.stat().st_mode) == 0o700


# -- retention removes only the relay's own files -----------------------------------------------

LOOKALIKES = [
    "task-20200101T000000-0123456789abcdef.txt\n",
    "task-\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661T000000-0123456789abcdef.txt",
    "task-\uff12\uff10\uff12\uff10\uff10\uff11\uff10\uff11T000000-0123456789abcdef.txt",
    "t\u00e2sk-20200101T000000-0123456789abcdef.txt",
]


@pytest.mark.parametrize(
    "name", LOOKALIKES, ids=["trailing-newline", "arabic-indic-digits", "fullwidth-digits", "non-ascii-label"]
)
def test_retention_keeps_old_files_that_only_look_like_relayed_output(tmp_path: Path, name: str) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    lookalike = relay_dir / name
    lookalike.write_text("keep me", encoding="utf-8")
    backdate(lookalike, 10 * 86400)

    assert relay_into(relay_dir).relay_if_large("task", BIG).path is not None

    assert lookalike.read_text(encoding="utf-8") == "keep me"


def test_retention_removes_the_relays_own_expired_files(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    old = relay_into(relay_dir).relay_if_large("task", BIG).path
    assert old is not None
    backdate(old, 10 * 86400)

    relay_into(relay_dir).relay_if_large("task", BIG)

    assert not old.exists()


def test_retention_never_follows_or_removes_a_symlink_named_like_relayed_output(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    backdate(victim, 10 * 86400)
    link = relay_dir / "task-20200101T000000-0123456789abcdef.txt"
    link.symlink_to(victim)
    backdate(link, 10 * 86400)

    relay_into(relay_dir).relay_if_large("task", BIG)

    assert link.is_symlink() and victim.read_text(encoding="utf-8") == "keep me"


@needs_root
def test_retention_keeps_an_expired_relay_named_file_owned_by_another_user(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    theirs = relay_dir / "task-20200101T000000-0123456789abcdef.txt"
    theirs.write_text("keep me", encoding="utf-8")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    backdate(theirs, 10 * 86400)

    relay_into(relay_dir).relay_if_large("task", BIG)

    assert theirs.read_text(encoding="utf-8") == "keep me"


def test_the_disk_budget_never_removes_files_that_are_not_the_relays(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    lookalike = relay_dir / LOOKALIKES[0]
    lookalike.write_bytes(b"x" * 100_000)
    backdate(lookalike, 3600)
    relay = OutputRelay(
        FollowupSettings(relay_dir=relay_dir, relay_max_file_bytes=65536, relay_max_total_bytes=65536),
        referenced_paths=lambda: [],
    )

    outcomes = [relay.relay_if_large("task", BIG * 3) for _ in range(3)]

    assert all(outcome.path is not None for outcome in outcomes)
    assert lookalike.stat().st_size == 100_000
