"""Plain-data forms of the ledger's values, for backends that store them or send them between
processes: records, notifications and effects to and from JSON-compatible dicts.

``decode_*(encode_*(x)) == x`` for every value (notifications and events compare all fields
that equality covers, and the extra ones survive too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..state import (
    BackgroundTask,
    RunRef,
    TaskCancelRequested,
    TaskFinished,
    TaskNotification,
    TaskProgress,
    TaskRegistered,
    TaskStarted,
    TaskState,
    TaskStatus,
    TaskTransferred,
)
from .protocol import Effect, RunAction, SessionChanged

__all__ = [
    "decode_effect",
    "decode_effects",
    "decode_notification",
    "decode_ref",
    "decode_state",
    "decode_task",
    "encode_effects",
    "encode_notification",
    "encode_ref",
    "encode_state",
    "encode_task",
]


def encode_state(state: TaskState) -> list[str]:
    return [state.status.value, state.text]


def decode_state(data: Sequence[str]) -> TaskState:
    return TaskState(TaskStatus(data[0]), data[1])


def encode_ref(ref: RunRef) -> list[Any]:
    return [ref.session, ref.task_id, ref.generation]


def decode_ref(data: Sequence[Any]) -> RunRef:
    return RunRef(str(data[0]), str(data[1]), int(data[2]))


_TASK_FIELDS = (
    "description",
    "session",
    "kind",
    "name",
    "parent",
    "generation",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "progress_at",
    "cancel_requested_by",
    "close_policy",
    "persistence_error",
    "stalled",
    "relay_path",
    "origin_session",
)


def encode_task(task: BackgroundTask) -> dict[str, Any]:
    data: dict[str, Any] = {"id": task.id, "state": encode_state(task.state)}
    for name in _TASK_FIELDS:
        data[name] = getattr(task, name)
    return data


def decode_task(data: dict[str, Any]) -> BackgroundTask:
    fields = {name: data[name] for name in _TASK_FIELDS if name in data}
    return BackgroundTask(id=data["id"], state=decode_state(data["state"]), **fields)


def encode_notification(notification: TaskNotification) -> dict[str, Any]:
    return {
        "id": notification.id,
        "state": encode_state(notification.state),
        "sequence": notification.sequence,
        "notification_id": notification.notification_id,
        "session": notification.session,
        "kind": notification.kind,
    }


def decode_notification(data: dict[str, Any]) -> TaskNotification:
    return TaskNotification(
        id=data["id"],
        state=decode_state(data["state"]),
        sequence=int(data["sequence"]),
        notification_id=data["notification_id"],
        session=data["session"],
        kind=data["kind"],
    )


def _encode_effect(effect: Effect) -> dict[str, Any]:
    if isinstance(effect, SessionChanged):
        return {"type": "changed", "session": effect.session}
    if isinstance(effect, RunAction):
        return {
            "type": "action",
            "epoch": effect.epoch,
            "ref": encode_ref(effect.ref),
            "action": effect.action,
            "reason": effect.reason,
        }
    if isinstance(effect, TaskRegistered):
        return {"type": "registered", "task": encode_task(effect.task)}
    if isinstance(effect, TaskStarted):
        return {"type": "started", "id": effect.id, "session": effect.session, "kind": effect.kind}
    if isinstance(effect, TaskProgress):
        return {
            "type": "progress",
            "id": effect.id,
            "message": effect.message,
            "at": effect.at,
            "session": effect.session,
            "kind": effect.kind,
        }
    if isinstance(effect, TaskCancelRequested):
        return {
            "type": "cancel_requested",
            "id": effect.id,
            "by": effect.by,
            "reason": effect.reason,
            "session": effect.session,
            "kind": effect.kind,
        }
    if isinstance(effect, TaskFinished):
        return {"type": "finished", "notification": encode_notification(effect.notification), "kind": effect.kind}
    if isinstance(effect, TaskTransferred):
        return {
            "type": "transferred",
            "id": effect.id,
            "from_session": effect.from_session,
            "session": effect.session,
            "kind": effect.kind,
        }
    raise TypeError(f"not a ledger effect: {effect!r}")


def _decode_effect(data: dict[str, Any]) -> Effect:
    kind = data["type"]
    if kind == "changed":
        return SessionChanged(data["session"])
    if kind == "action":
        return RunAction(data["epoch"], decode_ref(data["ref"]), data["action"], data["reason"])
    if kind == "registered":
        return TaskRegistered(decode_task(data["task"]))
    if kind == "started":
        return TaskStarted(data["id"], data["session"], data["kind"])
    if kind == "progress":
        return TaskProgress(data["id"], data["message"], data["at"], data["session"], data["kind"])
    if kind == "cancel_requested":
        return TaskCancelRequested(data["id"], data["by"], data["reason"], data["session"], data["kind"])
    if kind == "finished":
        return TaskFinished(decode_notification(data["notification"]), data["kind"])
    if kind == "transferred":
        return TaskTransferred(data["id"], data["from_session"], data["session"], data["kind"])
    raise ValueError(f"unknown ledger effect type {kind!r}")


def encode_effects(effects: Sequence[Effect]) -> str:
    """``effects`` as one compact JSON text."""
    return json.dumps([_encode_effect(effect) for effect in effects], separators=(",", ":"), ensure_ascii=False)


def decode_effects(text: str | bytes) -> list[Effect]:
    return [_decode_effect(item) for item in json.loads(text)]


def decode_effect(data: dict[str, Any]) -> Effect:
    """One effect from its plain-data form (an item of :func:`encode_effects`'s list)."""
    return _decode_effect(data)
