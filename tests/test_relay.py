"""Tests for ``followups.relay.OutputRelay``: inline pass-through, relayed files and previews,
file permissions and naming, retention, and failure to save."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import followups.relay as relay_module
from followups.relay import OutputRelay, RelayOutcome
from followups.settings import FollowupSettings
from followups.truncation import count_lines

TEMP_PREFIX = ".tmp-relay-"
ELISION = re.compile(r"(\d+) lines elided")


# --- helpers --------------------------------------------------------------------------------


def make_relay(tmp_path: Path, **overrides: object) -> OutputRelay:
    return OutputRelay(FollowupSettings(relay_dir=tmp_path / "relay", **overrides))


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def numbered_text(count: int, prefix: str = "line") -> str:
    """``count`` distinct newline-terminated lines; zero-padded so none is a prefix of another."""
    return "".join(f"{prefix} {i:05d}\n" for i in range(count))


def entries(directory: Path) -> list[str]:
    """Names in ``directory``, or nothing if it does not exist."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_inline(outcome: RelayOutcome, text: str, relay_dir: Path) -> None:
    assert outcome.text == text
    assert outcome.path is None
    assert outcome.error is None
    assert entries(relay_dir) == [], "an inline output must not write anything"


def assert_relayed(outcome: RelayOutcome, text: str, relay: OutputRelay) -> Path:
    """The output was saved whole to a new file directly in relay_dir, and the preview fits."""
    relay_dir = relay.settings.relay_dir
    path = outcome.path
    assert path is not None, f"not relayed: {outcome.text[:200]!r}"
    assert outcome.error is None
    assert path.is_absolute()
    assert path.is_file()
    assert path.parent == relay_dir.resolve()
    assert path.read_bytes().decode("utf-8") == text
    assert utf8_len(outcome.text) <= relay.settings.relay_inline_max_bytes
    return path


def expected_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def fail_with_enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_footer(outcome: RelayOutcome, text: str) -> None:
    """The last line names the line and byte counts, the file's path and how to read it."""
    footer = outcome.text.rsplit("\n", 1)[-1]
    assert f"{expected_lines(text)} lines" in footer
    assert f"{utf8_len(text)} bytes" in footer
    assert str(outcome.path) in footer
    assert "`read`" in footer and "offset/limit" in footer


def assert_unsaved(outcome: RelayOutcome, text: str, relay: OutputRelay, reason: str) -> None:
    """Saving failed: a plain notice with the reason, a bounded head of the output, no path."""
    assert outcome.path is None
    assert outcome.error is not None and reason in outcome.error
    assert "could not be saved" in outcome.text
    assert reason in outcome.text
    assert outcome.text.startswith(text[:200])
    assert utf8_len(outcome.text) <= relay.settings.relay_inline_max_bytes
    assert count_lines(outcome.text) <= relay.settings.relay_max_lines
    assert relay.relay_if_large("task", outcome.text).text == outcome.text, "the fallback must be inline-sized"
    assert str(relay.settings.relay_dir) not in outcome.text
    assert TEMP_PREFIX not in outcome.text
    assert not [name for name in entries(relay.settings.relay_dir) if name.startswith(TEMP_PREFIX)]


def backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- inline pass-through --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "done",
        numbered_text(200),
        "x" * 8192,
        "x\n" * 200,
        "é" * 3000,  # 3000 characters, 6000 UTF-8 bytes
        "€" * 2730,  # 8190 bytes
    ],
    ids=["empty", "short", "200-lines", "8192-bytes", "200-short-lines", "3000-e-acute", "2730-euro"],
)
def test_output_within_both_limits_is_returned_unchanged_and_writes_nothing(tmp_path: Path, text: str) -> None:
    relay = make_relay(tmp_path)
    assert_inline(relay.relay_if_large("task", text), text, relay.settings.relay_dir)


def test_inline_output_leaves_an_existing_relay_dir_empty(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    relay.settings.relay_dir.mkdir()
    assert_inline(relay.relay_if_large("task", "small"), "small", relay.settings.relay_dir)


@pytest.mark.parametrize(
    "text",
    [
        numbered_text(201),
        "x" * 8193,
        "é" * 5000,  # 5000 characters but 10000 UTF-8 bytes
        "€" * 2731,  # 8193 bytes
        "\n" * 201,
    ],
    ids=["201-lines", "8193-bytes", "5000-e-acute", "2731-euro", "201-empty-lines"],
)
def test_output_over_a_limit_is_saved_whole_to_a_file(tmp_path: Path, text: str) -> None:
    relay = make_relay(tmp_path)
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert_footer(outcome, text)


def test_byte_limit_counts_utf8_bytes_not_characters(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    assert relay.relay_if_large("task", "é" * 3000).path is None
    assert relay.relay_if_large("task", "é" * 5000).path is not None


def test_custom_limits_decide_what_is_relayed(tmp_path: Path) -> None:
    relay = make_relay(tmp_path, relay_inline_max_bytes=1024, relay_max_lines=10, relay_head_lines=3, relay_tail_lines=3)
    assert_inline(relay.relay_if_large("task", numbered_text(10)), numbered_text(10), relay.settings.relay_dir)
    assert_relayed(relay.relay_if_large("task", numbered_text(11)), numbered_text(11), relay)
    assert_relayed(relay.relay_if_large("task", "x" * 1025), "x" * 1025, relay)


# --- the preview ----------------------------------------------------------------------------


def test_preview_shows_first_50_and_last_50_lines_around_an_elision_count(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    text = numbered_text(5000)
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    lines = text.splitlines()
    shown = outcome.text.split("\n")
    assert shown[:50] == lines[:50]
    assert ELISION.search(shown[50]) and "4900 lines elided" in shown[50]
    assert shown[51:101] == lines[-50:]
    assert not set(lines[50:4950]) & set(shown), "elided lines must not appear in the preview"
    assert_footer(outcome, text)
    assert "5000 lines" in shown[-1]


def test_footer_names_line_count_byte_count_absolute_path_and_the_read_tool(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    text = numbered_text(300, prefix="résultat")
    outcome = relay.relay_if_large("task", text)
    path = assert_relayed(outcome, text, relay)
    footer = outcome.text.rsplit("\n", 1)[-1]
    assert "300 lines" in footer
    assert f"{utf8_len(text)} bytes" in footer
    assert str(path) in footer and path.is_absolute()
    assert "`read`" in footer and "offset/limit" in footer


@pytest.mark.parametrize("max_bytes", [8192, 1024])
def test_single_5mb_line_gives_a_small_preview_cut_with_a_marker(tmp_path: Path, max_bytes: int) -> None:
    relay = make_relay(tmp_path, relay_inline_max_bytes=max_bytes)
    text = "0123456789" * 500_000
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert utf8_len(outcome.text) <= max_bytes
    assert outcome.text.startswith("0123456789" * 10)
    assert re.search(r" \.\.\.\[\+\d+ chars\]", outcome.text), "a cut line must say it was cut"
    assert_footer(outcome, text)


@pytest.mark.parametrize("max_bytes", [8192, 1024])
def test_hundred_lines_of_100kb_give_a_preview_within_the_byte_limit(tmp_path: Path, max_bytes: int) -> None:
    relay = make_relay(tmp_path, relay_inline_max_bytes=max_bytes)
    text = "".join(f"{i:03d}" + "y" * 100_000 + "\n" for i in range(100))
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert utf8_len(outcome.text) <= max_bytes
    assert outcome.text.startswith("000yyyy")
    assert_footer(outcome, text)


@pytest.mark.parametrize("char", ["é", "€", "😀", "𝄞"])
@pytest.mark.parametrize("max_bytes", [8192, 1024])
def test_multibyte_output_preview_fits_in_utf8_bytes(tmp_path: Path, char: str, max_bytes: int) -> None:
    relay = make_relay(tmp_path, relay_inline_max_bytes=max_bytes)
    text = "\n".join(char * 5000 for _ in range(400))
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert utf8_len(outcome.text) <= max_bytes
    assert outcome.text.startswith(char * 4)
    assert "\ufffd" not in outcome.text, "a character was split"
    assert_footer(outcome, text)


def test_preview_fits_the_byte_limit_when_the_relay_path_is_multibyte(tmp_path: Path) -> None:
    relay = OutputRelay(FollowupSettings(relay_dir=tmp_path / ("€" * 80) / "relay", relay_inline_max_bytes=1024))
    text = "0123456789" * 500_000
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert_footer(outcome, text)


def test_small_budget_with_many_lines_keeps_the_footer_and_both_ends(tmp_path: Path) -> None:
    relay = make_relay(tmp_path, relay_inline_max_bytes=1024)
    text = numbered_text(5000, prefix="z" * 60)
    outcome = relay.relay_if_large("task", text)
    assert_relayed(outcome, text, relay)
    assert outcome.text.startswith("z" * 30)
    assert ELISION.search(outcome.text)
    assert_footer(outcome, text)


# --- files: permissions, names, concurrency -------------------------------------------------


def test_relayed_file_is_private_in_a_private_directory(tmp_path: Path) -> None:
    relay = OutputRelay(FollowupSettings(relay_dir=tmp_path / "deep" / "er" / "relay"))
    path = assert_relayed(relay.relay_if_large("task", numbered_text(300)), numbered_text(300), relay)
    assert mode_of(path) == 0o600
    assert mode_of(relay.settings.relay_dir) == 0o700


def test_existing_open_relay_dir_is_tightened_to_0700(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    relay.settings.relay_dir.mkdir()
    os.chmod(relay.settings.relay_dir, 0o755)
    path = assert_relayed(relay.relay_if_large("task", numbered_text(300)), numbered_text(300), relay)
    assert mode_of(relay.settings.relay_dir) == 0o700
    assert mode_of(path) == 0o600


def test_relaying_the_same_label_and_text_repeatedly_makes_distinct_files(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    text = numbered_text(300)
    paths = [assert_relayed(relay.relay_if_large("same", text), text, relay) for _ in range(50)]
    assert len(set(paths)) == 50
    assert len(entries(relay.settings.relay_dir)) == 50


def test_concurrent_relays_each_get_their_own_complete_file(tmp_path: Path) -> None:
    threads, per_thread = 16, 20
    relay = make_relay(tmp_path)
    barrier = threading.Barrier(threads)

    def worker(t: int) -> list[tuple[Path | None, str]]:
        barrier.wait(timeout=60)
        results = []
        for i in range(per_thread):
            text = numbered_text(250, prefix=f"thread {t} relay {i}")
            results.append((relay.relay_if_large("same", text).path, text))
        return results

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [item for future in [pool.submit(worker, t) for t in range(threads)] for item in future.result()]

    paths = [path for path, _ in results]
    assert None not in paths
    assert len(set(paths)) == threads * per_thread
    for path, text in results:
        assert path is not None and path.read_text(encoding="utf-8") == text
    names = entries(relay.settings.relay_dir)
    assert not [name for name in names if name.startswith(TEMP_PREFIX)]
    assert len(names) == threads * per_thread


@pytest.mark.parametrize(
    "label",
    [
        "../../etc/passwd",
        "/abs/path",
        "..",
        ".",
        "a/b\\c",
        "",
        "x" * 10_000,
        "nul\x00byte",
        "new\nline",
        "~/home",
        "ünïcødé/../..",
    ],
    ids=["dotdot-passwd", "absolute", "dotdot", "dot", "slashes", "empty", "10k-chars", "nul", "newline", "tilde", "unicode"],
)
def test_hostile_labels_produce_a_file_directly_inside_relay_dir(tmp_path: Path, label: str) -> None:
    relay = make_relay(tmp_path)
    text = numbered_text(300)
    path = assert_relayed(relay.relay_if_large(label, text), text, relay)
    assert path.name in entries(relay.settings.relay_dir)
    assert len(path.name) < 255
    outside = {p for p in tmp_path.rglob("*") if p.is_file() and p.parent != relay.settings.relay_dir}
    assert outside == set(), "nothing may be written outside relay_dir"


# --- retention ------------------------------------------------------------------------------


def test_expired_relayed_files_are_removed_by_a_later_relay(tmp_path: Path) -> None:
    settings_ = FollowupSettings(relay_dir=tmp_path / "relay", relay_retention_seconds=3600)
    text = numbered_text(300)
    first = OutputRelay(settings_)
    old = first.relay_if_large("task", text).path
    recent = first.relay_if_large("task", text).path
    assert old is not None and recent is not None
    backdate(old, 7200)

    new = OutputRelay(settings_).relay_if_large("task", text).path  # a new instance sweeps at once

    assert not old.exists(), "a file past retention should have been removed"
    assert recent is not None and recent.exists(), "a file within retention must be kept"
    assert new is not None and new.exists()


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "output.txt",
        "task-20200101T000000-0123456789abcdef.log",
        "task-20200101T000000-0123456789ABCDEF.txt",
        "task-2020-0123456789abcdef.txt",
    ],
)
def test_retention_never_removes_files_not_named_like_relayed_output(tmp_path: Path, name: str) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    foreign = relay_dir / name
    foreign.write_text("keep me", encoding="utf-8")
    backdate(foreign, 10 * 86400)

    path = OutputRelay(FollowupSettings(relay_dir=relay_dir)).relay_if_large("task", numbered_text(300)).path

    assert path is not None and path.exists()
    assert foreign.read_text(encoding="utf-8") == "keep me"


# --- failure to save ------------------------------------------------------------------------


@pytest.fixture
def read_only_relay(tmp_path: Path):
    relay = make_relay(tmp_path)
    relay_dir = relay.settings.relay_dir
    relay_dir.mkdir()
    os.chmod(relay_dir, 0o500)
    try:
        if os.access(relay_dir, os.W_OK):
            pytest.skip("a read-only directory is still writable for this user (root)")
        yield relay
    finally:
        os.chmod(relay_dir, 0o700)


def test_read_only_relay_dir_gives_head_capped_text_and_the_reason(read_only_relay: OutputRelay) -> None:
    text = numbered_text(5000)
    outcome = read_only_relay.relay_if_large("task", text)
    assert_unsaved(outcome, text, read_only_relay, "Permission denied")
    assert entries(read_only_relay.settings.relay_dir) == []


@pytest.mark.parametrize("target", ["rename", "write"])
def test_disk_full_gives_head_capped_text_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.setattr(relay_module.os, target, fail_with_enospc)
    relay = make_relay(tmp_path)
    text = numbered_text(5000)
    outcome = relay.relay_if_large("task", text)
    monkeypatch.undo()

    assert_unsaved(outcome, text, relay, "No space left on device")
    assert entries(relay.settings.relay_dir) == [], "the temporary file must be cleaned up"


@pytest.mark.parametrize("max_bytes", [8192, 1024])
def test_unsaved_huge_single_line_is_still_within_the_byte_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_bytes: int
) -> None:
    monkeypatch.setattr(relay_module.os, "rename", fail_with_enospc)
    relay = make_relay(tmp_path, relay_inline_max_bytes=max_bytes)
    text = "€" * 2_000_000
    outcome = relay.relay_if_large("task", text)
    monkeypatch.undo()

    assert_unsaved(outcome, text, relay, "No space left on device")
    assert "truncated" in outcome.text


def test_relay_dir_under_a_regular_file_gives_head_capped_text_and_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    relay = OutputRelay(FollowupSettings(relay_dir=blocker / "relay"))
    text = numbered_text(5000)
    outcome = relay.relay_if_large("task", text)
    assert_unsaved(outcome, text, relay, "Not a directory")
    assert str(blocker) not in outcome.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


# --- property -------------------------------------------------------------------------------

line_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=400)
any_output = st.lists(line_text, max_size=40).map("\n".join) | st.text(max_size=3000)


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> OutputRelay:
    return OutputRelay(
        FollowupSettings(
            relay_dir=tmp_path_factory.mktemp("property") / "relay",
            relay_inline_max_bytes=1024,
            relay_max_lines=10,
            relay_head_lines=3,
            relay_tail_lines=3,
        )
    )


@settings(max_examples=100, deadline=None, database=None)
@given(text=any_output)
def test_any_output_is_returned_whole_or_saved_whole_within_the_byte_limit(
    shared_relay: OutputRelay, text: str
) -> None:
    outcome = shared_relay.relay_if_large("prop", text)
    assert utf8_len(outcome.text) <= 1024
    if outcome.path is None:
        assert outcome.text == text
    else:
        assert outcome.path.read_bytes().decode("utf-8") == text


def test_relay_dir_too_long_for_the_byte_budget_is_refused_at_construction(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200) / ("g" * 200)
    with pytest.raises(ValueError, match="relay_inline_max_bytes"):
        OutputRelay(FollowupSettings(relay_dir=deep, relay_inline_max_bytes=1024))
    OutputRelay(FollowupSettings(relay_dir=deep, relay_inline_max_bytes=4096))


# --- one size decision ----------------------------------------------------------------------


class Unreadable(str):
    """A text that fails if anything but its length is looked at."""

    def count(self, *args: object, **kwargs: object) -> int:
        raise AssertionError("should_relay read the text")

    def encode(self, *args: object, **kwargs: object) -> bytes:
        raise AssertionError("should_relay encoded the text")

    def isascii(self) -> bool:
        raise AssertionError("should_relay read the text")


def test_should_relay_decides_a_text_over_the_byte_limit_from_its_length_alone(tmp_path: Path) -> None:
    assert make_relay(tmp_path).should_relay(Unreadable("x" * 8193))


@pytest.mark.parametrize(
    ("text", "relayed"),
    [
        ("x" * 8192, False),
        ("x" * 8193, True),
        ("x\n" * 200, False),
        ("x\n" * 200 + "x", True),
        ("€" * 2730, False),
        ("€" * 2731, True),
        ("\udcff" * 2730, False),
        ("\udcff" * 2731, True),
    ],
    ids=[
        "8192-bytes", "8193-bytes", "200-lines", "201-lines",
        "2730-euro", "2731-euro", "2730-surrogates", "2731-surrogates",
    ],
)
def test_should_relay_is_the_limit_relay_if_large_applies(tmp_path: Path, text: str, relayed: bool) -> None:
    relay = make_relay(tmp_path)
    assert relay.should_relay(text) is relayed
    outcome = relay.relay_if_large("task", text)
    assert (outcome.path is not None) is relayed


def test_relay_if_large_takes_its_decision_from_should_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = make_relay(tmp_path)
    monkeypatch.setattr(relay, "should_relay", lambda text: False)
    big = numbered_text(5000)
    assert relay.relay_if_large("task", big).text is big


@settings(max_examples=100, deadline=None, database=None)
@given(text=any_output | st.text(st.characters(), min_size=250, max_size=1100))
def test_should_relay_agrees_with_relay_if_large_on_any_text(shared_relay: OutputRelay, text: str) -> None:
    outcome = shared_relay.relay_if_large("prop", text)
    assert shared_relay.should_relay(text) is (outcome.path is not None or outcome.error is not None)


# --- valid UTF-8 ------------------------------------------------------------------------------


def test_lone_surrogates_are_u_fffd_in_both_the_file_and_the_preview(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    text = "".join(f"line {i} \udcff\udc80 end\n" for i in range(500))  # what surrogateescape leaves
    outcome = relay.relay_if_large("task", text)
    assert outcome.path is not None
    preview = outcome.text.encode("utf-8")  # raises if a surrogate was left in
    saved = outcome.path.read_bytes().decode("utf-8")
    assert saved == text.replace("\udcff", "\ufffd").replace("\udc80", "\ufffd")
    assert "line 0 \ufffd\ufffd end" in preview.decode("utf-8")
    assert f"{len(saved.encode('utf-8'))} bytes" in outcome.text
    assert len(preview) <= relay.settings.relay_inline_max_bytes


def test_an_unsaved_output_with_surrogates_is_valid_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module.os, "rename", fail_with_enospc)
    relay = make_relay(tmp_path)
    outcome = relay.relay_if_large("task", "\udcff" * 10_000)
    monkeypatch.undo()
    assert outcome.error is not None
    assert "\ufffd" in outcome.text.encode("utf-8").decode("utf-8")


# --- the footer is budgeted from the path it names ---------------------------------------------


def long_directory(tmp_path: Path) -> Path:
    deep = tmp_path
    for letter in "defgh":
        deep = deep / (letter * 200)
    deep.mkdir(parents=True)
    return deep  # over 1,000 characters


def test_a_short_symlink_to_a_very_long_directory_gives_an_unsaved_preview_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "r").symlink_to(long_directory(tmp_path))
    relay = OutputRelay(FollowupSettings(relay_dir=tmp_path / "r", relay_inline_max_bytes=1024))
    text = numbered_text(5000)
    outcome = relay.relay_if_large("task", text)
    assert outcome.path is None
    assert outcome.error is not None and "resolved path" in outcome.error
    assert utf8_len(outcome.text) <= 1024


def test_a_symlinked_relay_dir_previews_within_the_limit_naming_the_resolved_path(tmp_path: Path) -> None:
    deep = long_directory(tmp_path)
    (tmp_path / "r").symlink_to(deep)
    relay = OutputRelay(FollowupSettings(relay_dir=tmp_path / "r", relay_inline_max_bytes=4096))
    text = numbered_text(5000)
    outcome = relay.relay_if_large("task", text)
    assert outcome.path is not None and outcome.path.parent == deep
    assert str(outcome.path) in outcome.text
    assert utf8_len(outcome.text) <= 4096


# --- previews of ASCII outputs stay ASCII (one byte a character) --------------------------------


@pytest.mark.parametrize(
    "text",
    [numbered_text(5000), "0123456789" * 500_000, "".join(f"{i:03d}" + "y" * 100_000 + "\n" for i in range(20))],
    ids=["many-lines", "one-huge-line", "long-lines"],
)
def test_the_preview_of_an_ascii_output_is_ascii(tmp_path: Path, text: str) -> None:
    outcome = make_relay(tmp_path).relay_if_large("task", text)
    assert outcome.path is not None
    assert outcome.text.isascii()


def test_the_unsaved_fallback_of_an_ascii_output_is_ascii(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module.os, "rename", fail_with_enospc)
    outcome = make_relay(tmp_path).relay_if_large("task", "0123456789" * 500_000)
    monkeypatch.undo()
    assert outcome.error is not None and outcome.text.isascii()


# --- the per-file cap ---------------------------------------------------------------------------

CAP = 64 * 1024


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_an_output_past_the_file_cap_keeps_its_head_and_tail_with_a_marker(tmp_path: Path, char: str) -> None:
    relay = make_relay(tmp_path, relay_max_file_bytes=CAP)
    text = "".join(f"line {i:06d} {char * 7}\n" for i in range(30_000))
    data = text.encode("utf-8")
    outcome = relay.relay_if_large("task", text)
    assert outcome.path is not None
    saved = outcome.path.read_bytes()
    assert len(saved) <= CAP
    kept = saved.decode("utf-8")  # whole characters only
    head, marker, tail = kept.partition("\n[... ")
    assert marker, "the file must say where it was cut"
    cut = int(tail.split(" ", 1)[0])
    tail = tail.split("...]\n", 1)[1]
    assert text.startswith(head) and text.endswith(tail)
    assert len(head.encode()) + cut + len(tail.encode()) == len(data)
    assert "relay_max_file_bytes" in kept
    assert f"{cut} bytes were cut" in outcome.text
    assert f"{len(data)} bytes" in outcome.text and "30000 lines" in outcome.text


def test_an_output_exactly_at_the_file_cap_is_kept_whole(tmp_path: Path) -> None:
    relay = make_relay(tmp_path, relay_max_file_bytes=CAP)
    text = "x" * (CAP - 1) + "\n"
    outcome = relay.relay_if_large("task", text)
    assert outcome.path is not None and outcome.path.read_text(encoding="utf-8") == text
    assert "cut" not in outcome.text


# --- the disk budget ----------------------------------------------------------------------------


def relayed_files(directory: Path) -> list[str]:
    return [name for name in entries(directory) if not name.startswith(".")]


def test_past_the_total_the_oldest_unreferenced_files_go_first(tmp_path: Path) -> None:
    referenced: set[str] = set()
    relay = OutputRelay(
        FollowupSettings(relay_dir=tmp_path / "relay", relay_max_file_bytes=CAP, relay_max_total_bytes=3 * CAP),
        referenced_paths=lambda: referenced,
    )
    text = "y" * (CAP - 1) + "\n"
    first, second, third = (relay.relay_if_large("task", text).path for _ in range(3))
    assert first is not None and second is not None and third is not None
    backdate(first, 300)
    backdate(second, 200)
    backdate(third, 100)
    referenced.add(str(first))

    fourth = relay.relay_if_large("task", text).path

    assert fourth is not None
    assert first.exists(), "a file a pending notification names must stay"
    assert not second.exists(), "the oldest unreferenced file goes first"
    assert third.exists()


def test_with_every_file_referenced_the_output_is_not_saved_and_the_preview_says_why(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    referenced: list[str] = []
    relay = OutputRelay(
        FollowupSettings(relay_dir=relay_dir, relay_max_file_bytes=CAP, relay_max_total_bytes=2 * CAP),
        referenced_paths=lambda: referenced,
    )
    text = "z" * (CAP - 1) + "\n"
    referenced.extend(str(relay.relay_if_large("task", text).path) for _ in range(2))

    outcome = relay.relay_if_large("task", text)

    assert outcome.path is None
    assert outcome.error is not None and "relay_max_total_bytes" in outcome.error
    assert "relay_max_total_bytes" in outcome.text
    assert sorted(str(relay_dir.resolve() / name) for name in relayed_files(relay_dir)) == sorted(referenced)
    assert not [name for name in entries(relay_dir) if name.startswith(TEMP_PREFIX)]


def test_referenced_paths_is_called_without_a_relay_lock_held(tmp_path: Path) -> None:
    relay: OutputRelay
    finished = threading.Event()

    def referenced() -> list[str]:
        if threading.current_thread() is threading.main_thread() and not finished.is_set():

            def other_relay() -> None:
                relay.relay_if_large("other", "w" * (CAP - 1) + "\n")
                finished.set()

            thread = threading.Thread(target=other_relay)
            thread.start()
            thread.join(timeout=30)
        return []

    relay = OutputRelay(
        FollowupSettings(relay_dir=tmp_path / "relay", relay_max_file_bytes=CAP, relay_max_total_bytes=CAP),
        referenced_paths=referenced,
    )
    relay.relay_if_large("first", "v" * (CAP - 1) + "\n")
    relay.relay_if_large("second", "v" * (CAP - 1) + "\n")
    assert finished.is_set(), "a relay from another thread could not run while the callback did"


def test_a_failing_referenced_paths_removes_nothing(tmp_path: Path) -> None:
    def broken() -> list[str]:
        raise RuntimeError("store closed")

    relay_dir = tmp_path / "relay"
    relay = OutputRelay(
        FollowupSettings(relay_dir=relay_dir, relay_max_file_bytes=CAP, relay_max_total_bytes=CAP),
        referenced_paths=broken,
    )
    kept = relay.relay_if_large("task", "u" * (CAP - 1) + "\n").path
    outcome = relay.relay_if_large("task", "u" * (CAP - 1) + "\n")
    assert kept is not None and kept.exists()
    assert outcome.path is None and outcome.error is not None


def test_added_referenced_paths_are_consulted_until_removed(tmp_path: Path) -> None:
    relay = OutputRelay(
        FollowupSettings(relay_dir=tmp_path / "relay", relay_max_file_bytes=CAP, relay_max_total_bytes=CAP),
        referenced_paths=lambda: [],
    )
    text = "t" * (CAP - 1) + "\n"
    first = relay.relay_if_large("task", text).path
    stop = relay.add_referenced_paths(lambda: [str(first)])
    assert relay.relay_if_large("task", text).path is None
    stop()
    assert relay.relay_if_large("task", text).path is not None
    assert first is not None and not first.exists()


def test_without_referenced_paths_the_budget_removes_no_file(tmp_path: Path) -> None:
    relay = OutputRelay(
        FollowupSettings(relay_dir=tmp_path / "relay", relay_max_file_bytes=CAP, relay_max_total_bytes=CAP)
    )
    text = "s" * (CAP - 1) + "\n"
    first = relay.relay_if_large("task", text).path
    outcome = relay.relay_if_large("task", text)
    assert first is not None and first.exists(), "a file no source vouches for may still be named"
    assert outcome.path is None and outcome.error is not None and "relay_max_total_bytes" in outcome.error


# --- durability ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "synced"), [("full", ["file", "directory"]), ("normal", [])])
def test_full_durability_fsyncs_the_file_and_the_directory_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, synced: list[str]
) -> None:
    calls: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(relay_module.os, "fsync", recording_fsync)
    relay = make_relay(tmp_path, durability=durability)
    assert relay.relay_if_large("task", numbered_text(5000)).path is not None
    monkeypatch.undo()
    assert calls == synced


# --- shared relays ------------------------------------------------------------------------------


def test_shared_returns_one_relay_per_relay_settings(tmp_path: Path) -> None:
    settings_ = FollowupSettings(relay_dir=tmp_path / "relay")
    relay = OutputRelay.shared(settings_)
    assert OutputRelay.shared(FollowupSettings(relay_dir=tmp_path / "relay", capacity=99)) is relay
    assert OutputRelay.shared(FollowupSettings(relay_dir=tmp_path / "other")) is not relay
    assert OutputRelay.shared(FollowupSettings(relay_dir=tmp_path / "relay", relay_max_lines=300)) is not relay


def test_shared_from_many_threads_at_once_builds_one_relay(tmp_path: Path) -> None:
    settings_ = FollowupSettings(relay_dir=tmp_path / "threads")
    barrier = threading.Barrier(8)

    def get() -> OutputRelay:
        barrier.wait(timeout=30)
        return OutputRelay.shared(settings_)

    with ThreadPoolExecutor(max_workers=8) as pool:
        relays = list(pool.map(lambda _: get(), range(8)))
    assert len({id(relay) for relay in relays}) == 1


def test_a_shared_relay_picks_up_an_edited_template(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    footer = templates / "relay_footer.j2"
    footer.write_text("first {{ path }}")
    settings_ = FollowupSettings(relay_dir=tmp_path / "relay", template_dir=templates)
    before = OutputRelay.shared(settings_)
    footer.write_text("second, longer {{ path }}")
    os.utime(footer, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    after = OutputRelay.shared(settings_)
    assert after is not before
    assert "second, longer" in after.relay_if_large("task", numbered_text(300)).text


# --- a real full disk (root: a small tmpfs) -------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 64 KiB tmpfs mounted at ``tmp_path / "tiny"``; skipped where mounting is not allowed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_gives_the_unsaved_preview_and_leaves_no_temporary_file(tiny_filesystem: Path) -> None:
    relay = OutputRelay(FollowupSettings(relay_dir=tiny_filesystem / "relay"))
    text = numbered_text(20_000)  # 220 kB into 64 KiB
    outcome = relay.relay_if_large("task", text)
    assert_unsaved(outcome, text, relay, "No space left on device")
    stream_outcome = stream_into(relay, text)
    assert stream_outcome.path is None and stream_outcome.error is not None
    assert "No space left on device" in stream_outcome.error
    assert entries(tiny_filesystem / "relay") == []


def stream_into(relay: OutputRelay, text: str) -> RelayOutcome:
    with relay.open_stream("shell") as stream:
        stream.write(text.encode())
    return stream.close()
