"""The plain-data forms durable backends store and send: every value survives the round trip."""

from __future__ import annotations

from followups import (
    BackgroundTask,
    RunRef,
    TaskCancelRequested,
    TaskFinished,
    TaskNotification,
    TaskProgress,
    TaskRegistered,
    TaskStarted,
    TaskState,
    TaskTransferred,
)
from followups.ledger import RunAction, SessionChanged
from followups.ledger.codec import decode_effects, decode_task, encode_effects, encode_task

TASK = BackgroundTask(
    id="t1",
    state=TaskState.failed("boom ✗"),
    description="d",
    session="conv-1",
    kind="shell",
    name="builder",
    parent="p",
    generation=7,
    created_at=1.5,
    started_at=2.5,
    finished_at=3.5,
    progress="50%",
    progress_at=3.0,
    cancel_requested_by="user",
    close_policy="keep",
    relay_path="/r/x.txt",
    origin_session="conv-0",
)
NOTIFICATION = TaskNotification("t1", TaskState.completed("ok"), 4, "7.2", "conv-1", "question")


def test_every_record_field_survives_the_round_trip() -> None:
    assert decode_task(encode_task(TASK)) == TASK


def test_every_effect_survives_the_round_trip_with_all_its_fields() -> None:
    effects = [
        SessionChanged("conv-1"),
        RunAction("epoch-1", RunRef("conv-0", "t1", 7), "cancel", "by request"),
        TaskRegistered(TASK),
        TaskStarted("t1", "conv-1", "shell"),
        TaskProgress("t1", "half", 3.0, "conv-1", "shell"),
        TaskCancelRequested("t1", "user", "by request", "conv-1", "shell"),
        TaskFinished(NOTIFICATION, "shell"),
        TaskTransferred("t1", "conv-0", "conv-1", "shell"),
    ]
    decoded = decode_effects(encode_effects(effects))
    assert decoded == effects
    finished = decoded[6]
    assert isinstance(finished, TaskFinished)
    assert (finished.notification.sequence, finished.notification.notification_id, finished.notification.kind) == (
        4,
        "7.2",
        "question",
    )
