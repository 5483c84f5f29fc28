"""Tests for relayed previews held compressed: ``CompressedText``, a ``TaskState`` whose text is
deferred, and a store whose undrained relayed results render exactly the preview the relay built."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import re
from pathlib import Path

import pytest

from followups import BackgroundStore, FollowupSettings, TaskState
from followups.bounding import OutputBounds
from followups.delivery import take_followup
from followups.relay import CompressedText, OutputRelay
from followups.state import TaskStatus


def varied_output(lines: int) -> str:
    return "".join(f"{i:05d} result {'é' if i % 7 == 0 else 'e'} {i * 7919 % 10007} {'ab' * (i % 13)}\n" for i in range(lines))


def test_compressed_text_renders_exactly_the_text_each_time() -> None:
    text = varied_output(300)
    compressed = CompressedText.of(text)
    assert compressed is not None
    assert compressed.render() == text
    assert compressed.render() == text
    assert compressed.length == len(text)
    assert compressed.compressed_bytes < len(text.encode("utf-8")) * 3 // 4


def test_short_incompressible_or_surrogate_texts_are_not_compressed() -> None:
    assert CompressedText.of("short") is None
    assert CompressedText.of("x" * 2000 + "\ud800") is None
    rng = random.Random(7)
    random_like = "".join(chr(rng.randrange(33, 127)) for _ in range(4000))  # 6.6 bits a byte
    assert CompressedText.of(random_like) is None


def test_deferred_state_equals_hashes_and_pickles_as_the_plain_state() -> None:
    text = varied_output(200)
    compressed = CompressedText.of(text)
    assert compressed is not None
    deferred = TaskState.deferred(TaskStatus.COMPLETED, compressed)
    plain = TaskState.completed(text)
    assert deferred.is_deferred and not plain.is_deferred
    assert deferred.text == text
    assert deferred.text_length == len(text)
    assert deferred == plain and plain == deferred
    assert hash(deferred) == hash(plain)
    assert deferred != TaskState.failed(text)
    restored = pickle.loads(pickle.dumps(deferred))
    assert restored == plain and not restored.is_deferred
    assert copy.deepcopy(deferred) == plain
    assert repr(deferred) == repr(plain)


def test_task_state_stays_frozen_and_checks_its_text() -> None:
    state = TaskState.completed("done")
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.text = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="TaskState.text must be str, got int"):
        TaskState(TaskStatus.COMPLETED, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a DeferredText, got str"):
        TaskState.deferred(TaskStatus.COMPLETED, "text")  # type: ignore[arg-type]
    assert TaskState("failed", "x").status is TaskStatus.FAILED
    match state:
        case TaskState(TaskStatus.COMPLETED, text):
            assert text == "done"
        case _:
            pytest.fail("TaskState no longer matches positionally")


def test_bounding_a_relayed_result_keeps_exactly_the_relays_preview(tmp_path: Path) -> None:
    settings = FollowupSettings(relay_dir=tmp_path / "relay")
    relay = OutputRelay(settings)
    output = varied_output(5000)
    expected = relay.relay_if_large("t", output).text
    bounded = OutputBounds(relay, 1000).bound("t", TaskState.completed(output))
    assert bounded.relay_path is not None
    assert bounded.state.is_deferred
    # the preview names its own file, so compare everything but the file name
    def unnamed(text: str) -> str:
        return re.sub(r"saved to \S+?\.txt", "saved to FILE", text)

    assert bounded.relay_path in bounded.state.text
    assert unnamed(bounded.state.text) == unnamed(expected)
    assert bounded.state.text_length == len(bounded.state.text)


def test_undrained_relayed_results_render_their_previews_whole(tmp_path: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay"))
    outputs = {f"task-{i}": varied_output(3000 + i) for i in range(3)}
    for task_id, output in outputs.items():
        store.insert(task_id)
        store.notify(task_id, TaskState.completed(output))
    pending = store.pending_notifications()
    assert [n.id for n in pending] == list(outputs)
    assert all(n.state.is_deferred for n in pending)
    for notification in pending:
        text = notification.state.text
        assert text.startswith(outputs[notification.id][:40])
        assert "saved to" in text
        path = store.get(notification.id).relay_path
        assert path is not None and path in text
    delivery = take_followup(store)
    assert delivery is not None
    assert [n.id for n in delivery.notifications] == list(outputs)
    for notification in pending:
        assert notification.state.text in delivery.text
