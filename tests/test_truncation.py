"""Unit tests for ``followups.truncation``: head_cap, count_lines, cut_to_bytes, build_preview."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from followups.truncation import Preview, build_preview, count_lines, cut_to_bytes, head_cap

CUT_LINE = re.compile(r"^(?P<kept>.*) \.\.\.\[\+(?P<dropped>\d+) chars\]$", re.DOTALL)
ELISION = re.compile(r"(\d+) lines elided")

property_settings = settings(max_examples=100, deadline=None, database=None)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def numbered(count: int, prefix: str = "line") -> list[str]:
    """``count`` distinct lines; zero-padded so no line is a prefix of another."""
    return [f"{prefix} {i:05d}" for i in range(count)]


def elided_in(line: str) -> int | None:
    """The count in an elision marker line, or None if ``line`` is not one."""
    match = ELISION.search(line)
    return int(match.group(1)) if match else None


def assert_shows(rendered: str, original: str) -> None:
    """``rendered`` is ``original`` whole, or its start followed by a correct cut marker."""
    if rendered == original:
        return
    match = CUT_LINE.match(rendered)
    assert match, f"{rendered[:60]!r} is neither the line {original[:60]!r} nor a cut of it"
    assert original.startswith(match["kept"])
    assert len(match["kept"]) + int(match["dropped"]) == len(original)


def preview_of(lines: list[str], *, head: int, tail: int, max_bytes: int = 100_000, end: str = "\n") -> Preview:
    return build_preview("\n".join(lines) + end, head_lines=head, tail_lines=tail, max_bytes=max_bytes)


# --- head_cap -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "short", "x" * 100])
def test_head_cap_returns_text_within_limit_unchanged(text: str) -> None:
    assert head_cap(text, 100, "task error") == text


def test_head_cap_at_exact_limit_is_unchanged() -> None:
    text = "é" * 50
    assert head_cap(text, 50, "task error") == text


def test_head_cap_keeps_exactly_limit_characters_and_counts_the_dropped_ones() -> None:
    text = "abcdefghij" * 10  # 100 characters
    capped = head_cap(text, 30, "task error")
    assert capped == text[:30] + "...[task error truncated: dropped 70 of 100 characters]"


def test_head_cap_counts_characters_not_bytes() -> None:
    text = "€" * 40
    capped = head_cap(text, 10, "output")
    assert capped == "€" * 10 + "...[output truncated: dropped 30 of 40 characters]"


def test_head_cap_limit_zero_keeps_only_the_marker() -> None:
    assert head_cap("abc", 0, "cancel reason") == "...[cancel reason truncated: dropped 3 of 3 characters]"


@pytest.mark.parametrize("limit", [-1, -100, 1.5, 10.0, "10", None])
def test_head_cap_rejects_negative_or_non_int_limit(limit: object) -> None:
    with pytest.raises(ValueError):
        head_cap("some text", limit, "task error")  # type: ignore[arg-type]


# --- count_lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("a\n", 1),
        ("a\nb", 2),
        ("a\nb\n", 2),
        ("\n", 1),
        ("\n\n\n", 3),
        ("a\n\nb\n", 3),
        ("\r\n\r\n", 2),
    ],
)
def test_count_lines_counts_an_unterminated_last_line_and_nothing_for_empty_text(text: str, expected: int) -> None:
    assert count_lines(text) == expected


# --- cut_to_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_bytes", "expected"),
    [
        ("hello", 10, "hello"),
        ("hello", 5, "hello"),
        ("hello", 3, "hel"),
        ("hello", 0, ""),
        ("", 5, ""),
        ("éé", 3, "é"),  # 2-byte characters: the second would be split
        ("éé", 4, "éé"),
        ("a€", 3, "a"),  # 3-byte euro sign does not fit in the 2 bytes left
        ("€€", 5, "€"),
        ("😀x", 3, ""),  # a 4-byte emoji never comes out half
        ("😀x", 4, "😀"),
        ("😀x", 5, "😀x"),
    ],
)
def test_cut_to_bytes_keeps_longest_prefix_without_splitting_a_character(
    text: str, max_bytes: int, expected: str
) -> None:
    assert cut_to_bytes(text, max_bytes) == expected


def test_cut_to_bytes_bounds_a_huge_text() -> None:
    text = "€" * 2_000_000
    cut = cut_to_bytes(text, 1000)
    assert cut == "€" * 333
    assert utf8_len(cut) <= 1000


@property_settings
@given(text=st.text(), max_bytes=st.integers(min_value=0, max_value=200))
def test_cut_to_bytes_is_the_longest_utf8_prefix_that_fits(text: str, max_bytes: int) -> None:
    cut = cut_to_bytes(text, max_bytes)
    assert text.startswith(cut)
    assert utf8_len(cut) <= max_bytes
    if cut != text:
        assert utf8_len(text[: len(cut) + 1]) > max_bytes, "a longer prefix would still have fit"


# --- build_preview --------------------------------------------------------------------------


def test_build_preview_of_empty_text_is_empty() -> None:
    assert build_preview("", head_lines=50, tail_lines=50, max_bytes=1000) == Preview("", 0, 0)


@pytest.mark.parametrize("end", ["\n", ""], ids=["trailing-newline", "no-trailing-newline"])
def test_build_preview_shows_all_lines_when_few_and_small(end: str) -> None:
    lines = numbered(7)
    preview = preview_of(lines, head=5, tail=5, end=end)
    assert preview.text.split("\n") == lines
    assert (preview.total_lines, preview.elided_lines) == (7, 0)


@pytest.mark.parametrize("end", ["\n", ""], ids=["trailing-newline", "no-trailing-newline"])
def test_build_preview_keeps_head_and_tail_around_an_elision_count(end: str) -> None:
    lines = numbered(5000)
    preview = preview_of(lines, head=50, tail=50, end=end)
    shown = preview.text.split("\n")
    assert shown[:50] == lines[:50]
    assert elided_in(shown[50]) == 4900
    assert shown[51:] == lines[-50:]
    assert (preview.total_lines, preview.elided_lines) == (5000, 4900)


def test_build_preview_of_only_newlines_counts_empty_lines() -> None:
    preview = build_preview("\n" * 10, head_lines=2, tail_lines=3, max_bytes=1000)
    shown = preview.text.split("\n")
    assert shown[:2] == ["", ""]
    assert elided_in(shown[2]) == 5
    assert shown[3:] == ["", "", ""]
    assert (preview.total_lines, preview.elided_lines) == (10, 5)


def test_build_preview_with_zero_head_lines_shows_only_the_tail() -> None:
    lines = numbered(20)
    preview = preview_of(lines, head=0, tail=3)
    shown = preview.text.split("\n")
    assert elided_in(shown[0]) == 17
    assert shown[1:] == lines[-3:]


def test_build_preview_cuts_a_single_huge_line_with_a_marker_counting_dropped_chars() -> None:
    line = "0123456789" * 500_000  # 5 MB, one line
    preview = build_preview(line, head_lines=50, tail_lines=50, max_bytes=4000)
    assert utf8_len(preview.text) <= 4000
    match = CUT_LINE.match(preview.text)
    assert match, f"no cut marker in {preview.text[-80:]!r}"
    kept = match.group("kept")
    assert line.startswith(kept) and len(kept) > 1000, "the budget should go to the line's start"
    assert len(kept) + int(match.group("dropped")) == len(line)
    assert (preview.total_lines, preview.elided_lines) == (1, 0)


def test_build_preview_of_long_lines_fewer_than_head_plus_tail_stays_in_budget() -> None:
    lines = [f"{i:03d}" + "x" * 1000 for i in range(5)]
    preview = preview_of(lines, head=50, tail=50, max_bytes=600, end="")
    assert utf8_len(preview.text) <= 600
    assert preview.total_lines == 5
    shown = [line for line in preview.text.split("\n") if elided_in(line) is None]
    assert len(shown) + preview.elided_lines == 5
    for rendered, original in zip(shown, lines, strict=False):
        assert rendered != original, "a 1003-byte line cannot fit a 600-byte budget whole"
        assert_shows(rendered, original)


def test_build_preview_drops_lines_into_the_elision_count_when_even_cut_lines_do_not_fit() -> None:
    lines = numbered(5000, prefix="y" * 200)
    preview = preview_of(lines, head=50, tail=50, max_bytes=1024)
    assert utf8_len(preview.text) <= 1024
    shown = preview.text.split("\n")
    markers = [i for i, line in enumerate(shown) if elided_in(line) is not None]
    assert len(markers) == 1
    head, tail = shown[: markers[0]], shown[markers[0] + 1 :]
    assert head and tail, "both ends of the output should stay visible"
    assert elided_in(shown[markers[0]]) == preview.elided_lines == 5000 - len(head) - len(tail)
    for rendered, original in zip(head + tail, lines[: len(head)] + lines[len(lines) - len(tail) :], strict=True):
        assert_shows(rendered, original)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_build_preview_of_multibyte_lines_stays_in_budget_and_keeps_whole_characters(char: str) -> None:
    text = "\n".join(char * 3000 for _ in range(300))
    preview = build_preview(text, head_lines=50, tail_lines=50, max_bytes=2000)
    data = preview.text.encode("utf-8")  # a split character would not round-trip
    assert len(data) <= 2000
    assert data.decode("utf-8") == preview.text
    assert preview.total_lines == 300
    assert preview.elided_lines >= 200


def test_build_preview_rejects_negative_budget() -> None:
    with pytest.raises(ValueError):
        build_preview("text", head_lines=1, tail_lines=1, max_bytes=-1)


line_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=300)
multiline_text = st.lists(line_text, max_size=60).map("\n".join) | st.text()


@property_settings
@given(
    text=multiline_text,
    head=st.integers(min_value=0, max_value=10),
    tail=st.integers(min_value=0, max_value=10),
    max_bytes=st.integers(min_value=0, max_value=3000),
)
def test_build_preview_never_exceeds_its_byte_budget(text: str, head: int, tail: int, max_bytes: int) -> None:
    preview = build_preview(text, head_lines=head, tail_lines=tail, max_bytes=max_bytes)
    assert utf8_len(preview.text) <= max_bytes
    assert preview.total_lines == count_lines(text)
    assert 0 <= preview.elided_lines <= preview.total_lines
