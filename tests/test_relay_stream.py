"""Tests for ``RelayStream``: an output saved as its bytes arrive, with the same outcome as
``relay_if_large`` would give the whole text."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import followups.relay as relay_module
from followups.relay import OutputRelay, RelayOutcome, RelayStream
from followups.settings import FollowupSettings

TEMP_PREFIX = ".tmp-relay-"


def make_relay(tmp_path: Path, **overrides: object) -> OutputRelay:
    return OutputRelay(FollowupSettings(relay_dir=tmp_path / "relay", **overrides))


def stream_all(relay: OutputRelay, chunks: list[bytes]) -> RelayOutcome:
    with relay.open_stream("shell") as stream:
        for chunk in chunks:
            stream.write(chunk)
    return stream.close()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def without_path(outcome: RelayOutcome) -> str:
    return outcome.text if outcome.path is None else outcome.text.replace(str(outcome.path), "<path>")


def numbered(count: int) -> str:
    return "".join(f"shell line {i:05d}\n" for i in range(count))


def names_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_a_small_output_comes_back_whole_and_leaves_no_file(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    outcome = stream_all(relay, [b"hello ", b"world\n"])
    assert outcome == RelayOutcome("hello world\n")
    assert names_in(relay.settings.relay_dir) == []


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_a_large_output_is_saved_whole_and_previewed_as_relay_if_large_would(tmp_path: Path, chunk_size: int) -> None:
    relay = make_relay(tmp_path)
    text = numbered(5000)
    streamed = stream_all(relay, pieces(text.encode(), chunk_size))
    direct = relay.relay_if_large("shell", text)
    assert streamed.path is not None and streamed.path.read_text(encoding="utf-8") == text
    assert without_path(streamed) == without_path(direct)


def test_a_single_huge_line_streams_to_a_bounded_preview(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    text = "0123456789" * 500_000
    streamed = stream_all(relay, pieces(text.encode(), 65536))
    assert without_path(streamed) == without_path(relay.relay_if_large("shell", text))
    assert len(streamed.text.encode()) <= relay.settings.relay_inline_max_bytes


def test_invalid_utf8_is_u_fffd_in_the_file_and_the_preview(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    data = b"".join(b"bad \xff\xfe byte %d\n" % i for i in range(500))
    outcome = stream_all(relay, pieces(data, 5))
    assert outcome.path is not None
    saved = outcome.path.read_text(encoding="utf-8")
    assert saved == data.decode("utf-8", "replace")
    assert "bad \ufffd\ufffd byte 0" in outcome.text


def test_a_character_split_across_writes_arrives_whole(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    data = ("€😀 " * 5000).encode()
    outcome = stream_all(relay, pieces(data, 1))
    assert outcome.path is not None and outcome.path.read_bytes() == data
    assert "\ufffd" not in outcome.text


def test_lines_and_size_count_what_arrived(tmp_path: Path) -> None:
    with make_relay(tmp_path).open_stream("shell") as stream:
        assert (stream.lines, stream.size_bytes) == (0, 0)
        stream.write(b"one\ntwo")
        assert (stream.lines, stream.size_bytes) == (2, 7)
        stream.write(b"\n\xe2\x82")  # an incomplete euro sign waits for its last byte
        assert (stream.lines, stream.size_bytes) == (2, 8)
        stream.write(b"\xac")
        assert (stream.lines, stream.size_bytes) == (3, 11)


def test_an_output_past_the_file_cap_keeps_head_and_tail(tmp_path: Path) -> None:
    cap = 64 * 1024
    relay = make_relay(tmp_path, relay_max_file_bytes=cap)
    text = numbered(30_000)
    outcome = stream_all(relay, pieces(text.encode(), 3000))
    assert outcome.path is not None
    saved = outcome.path.read_text(encoding="utf-8")
    assert len(saved.encode()) <= cap
    head, _, rest = saved.partition("\n[... ")
    assert text.startswith(head) and text.endswith(rest.split("...]\n", 1)[1])
    assert "bytes were cut" in outcome.text and "30000 lines" in outcome.text


def test_a_disk_failure_midway_gives_the_unsaved_preview_and_removes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = make_relay(tmp_path)
    stream = relay.open_stream("shell")
    stream.write(numbered(100).encode())

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(relay_module.os, "write", disk_full)
    stream.write(numbered(5000).encode())  # must not raise
    monkeypatch.undo()
    stream.write(b"more\n")
    outcome = stream.close()

    assert outcome.path is None
    assert outcome.error is not None and "No space left on device" in outcome.error
    assert outcome.text.startswith("shell line 00000\n")
    assert "could not be saved" in outcome.text
    assert names_in(relay.settings.relay_dir) == []


def test_an_unusable_directory_gives_the_unsaved_preview_at_close(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    relay = OutputRelay(FollowupSettings(relay_dir=blocker / "relay"))
    outcome = stream_all(relay, [numbered(5000).encode()])
    assert outcome.path is None and outcome.error is not None and "Not a directory" in outcome.error


def test_close_is_idempotent_and_writing_after_it_is_an_error(tmp_path: Path) -> None:
    stream = make_relay(tmp_path).open_stream("shell")
    stream.write(numbered(5000).encode())
    first = stream.close()
    assert stream.close() is first
    with pytest.raises(ValueError, match="closed"):
        stream.write(b"late")


def test_writing_text_instead_of_bytes_is_a_type_error(tmp_path: Path) -> None:
    stream = make_relay(tmp_path).open_stream("shell")
    with pytest.raises(TypeError, match="bytes"):
        stream.write("text")  # type: ignore[arg-type]
    stream.close()


def test_an_abandoned_stream_leaves_no_temporary_file(tmp_path: Path) -> None:
    relay = make_relay(tmp_path)
    stream: RelayStream | None = relay.open_stream("shell")
    assert stream is not None
    stream.write(numbered(5000).encode())
    assert [name for name in names_in(relay.settings.relay_dir) if name.startswith(TEMP_PREFIX)]
    del stream
    assert names_in(relay.settings.relay_dir) == []


def test_counts_can_be_read_from_another_thread_while_one_writes(tmp_path: Path) -> None:
    stream = make_relay(tmp_path).open_stream("shell")
    written = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        for i in range(2000):
            stream.write(f"line {i}\n".encode())
            if i == 999:
                written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    written.wait(timeout=30)
    seen.append(stream.lines)
    thread.join(timeout=30)
    assert 1000 <= seen[0] <= 2000
    assert stream.close().path is not None
    assert stream.lines == 2000


@pytest.fixture(scope="module")
def small_relay(tmp_path_factory: pytest.TempPathFactory) -> OutputRelay:
    return OutputRelay(
        FollowupSettings(
            relay_dir=tmp_path_factory.mktemp("stream") / "relay",
            relay_inline_max_bytes=1024,
            relay_max_lines=10,
            relay_head_lines=3,
            relay_tail_lines=3,
        )
    )


lines_text = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=300), max_size=40).map("\n".join)


@settings(max_examples=150, deadline=None, database=None)
@given(text=lines_text | st.text(st.characters(exclude_categories=("Cs",)), max_size=3000), cut=st.integers(1, 50))
def test_any_streamed_output_has_the_outcome_relay_if_large_gives_the_whole_text(
    small_relay: OutputRelay, text: str, cut: int
) -> None:
    streamed = stream_all(small_relay, pieces(text.encode(), cut))
    direct = small_relay.relay_if_large("shell", text)
    assert (streamed.path is None) == (direct.path is None)
    assert without_path(streamed) == without_path(direct)
    if streamed.path is not None:
        assert streamed.path.read_bytes().decode("utf-8") == text
