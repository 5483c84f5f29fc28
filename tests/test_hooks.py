from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from followups import (
    BackgroundStore,
    FollowupPlugin,
    FollowupSettings,
    ReminderRenderer,
    TaskState,
    UserMessage,
    followup_from_store,
    prepend_pending_notifications,
)


def finish(store: BackgroundStore, *ids: str, text: str = "done") -> None:
    for id in ids:
        store.insert(id)
        store.notify(id, TaskState.completed(f"{text} {id}"))


def broken_renderer() -> ReminderRenderer:
    """A renderer whose reminders fail at render time, as a template with a runtime error would."""
    renderer = ReminderRenderer()

    def explode(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("template exploded")

    renderer.render_followup = explode  # type: ignore[method-assign]
    renderer.render_prompt = explode  # type: ignore[method-assign]
    return renderer


class Registry:
    def __init__(self) -> None:
        self.hooks: dict[str, Callable[..., Any]] = {}

    def register_hook(self, name: str, hook: Callable[..., Any]) -> None:
        self.hooks[name] = hook


# -- the follow-up hook ------------------------------------------------------------------


async def test_followup_hook_returns_one_user_message_then_nothing(store: BackgroundStore) -> None:
    finish(store, "t1", "t2")
    hook = followup_from_store(store)
    messages = await hook()
    assert len(messages) == 1
    assert isinstance(messages[0], UserMessage)
    assert messages[0].role == "user"
    assert "[task t1] completed: done t1" in messages[0].content
    assert await hook() == []


async def test_render_failure_loses_nothing_and_propagates(store: BackgroundStore) -> None:
    finish(store, "t1", "t2", "t3")
    hook = followup_from_store(store, broken_renderer())
    with pytest.raises(RuntimeError, match="template exploded"):
        await hook()
    assert [n.id for n in store.drain_notifications()] == ["t1", "t2", "t3"]


async def test_render_failure_puts_the_batch_back_before_later_results(store: BackgroundStore) -> None:
    finish(store, "t1", "t2")
    with pytest.raises(RuntimeError):
        await followup_from_store(store, broken_renderer())()
    finish(store, "t3")
    messages = await followup_from_store(store)()
    content = messages[0].content
    assert content.index("[task t1]") < content.index("[task t2]") < content.index("[task t3]")


async def test_budget_delivers_what_fits_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path, reminder_budget_chars=3000))
    for i in range(8):
        store.insert(f"t{i}")
        store.notify(f"t{i}", TaskState.failed(f"error {i} " + "x" * 900))
    hook = followup_from_store(store)
    delivered: list[str] = []
    rounds = 0
    while messages := await hook():
        rounds += 1
        content = messages[0].content
        assert len(content) <= 3000
        ids = [f"t{i}" for i in range(8) if f"[task t{i}]" in content]
        delivered.extend(ids)
        left = store.pending_count()
        if left:
            assert f"{left} more finished background task" in content
    assert delivered == [f"t{i}" for i in range(8)]
    assert rounds == 3


# -- prepending --------------------------------------------------------------------------


def test_prepend_with_no_store_or_nothing_pending_leaves_prompt_unchanged(store: BackgroundStore) -> None:
    assert prepend_pending_notifications("hello", None) == "hello"
    store.insert("running")
    assert prepend_pending_notifications("hello", store) == "hello"


def test_prepend_render_failure_loses_nothing(store: BackgroundStore) -> None:
    finish(store, "t1")
    with pytest.raises(RuntimeError):
        prepend_pending_notifications("hi", store, broken_renderer())
    assert "Task t1 (completed)" in prepend_pending_notifications("hi", store)


def test_prepend_respects_the_budget(tmp_path: Path) -> None:
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path, reminder_budget_chars=2000))
    for i in range(4):
        store.insert(f"t{i}")
        store.notify(f"t{i}", TaskState.failed("x" * 900))
    first = prepend_pending_notifications("prompt", store)
    assert "Task t0" in first
    assert len(first) - len("prompt") <= 2000
    assert first.endswith("\n\nprompt")
    assert store.pending_count() > 0


# -- the plugin --------------------------------------------------------------------------


async def test_plugin_registers_both_hooks_on_a_loop(store: BackgroundStore) -> None:
    registry = Registry()
    FollowupPlugin(store).register(registry)
    assert set(registry.hooks) == {"get_followup_messages", "transform_prompt"}
    finish(store, "t1")
    messages = await registry.hooks["get_followup_messages"]()
    assert "[task t1] completed" in messages[0].content


async def test_both_boundaries_share_one_exactly_once_queue(store: BackgroundStore) -> None:
    plugin = FollowupPlugin(store)
    finish(store, "t1")
    assert "Task t1" in plugin.transform_prompt("next prompt")
    assert await plugin.get_followup_messages() == []
    finish(store, "t2")
    assert "[task t2]" in (await plugin.get_followup_messages())[0].content
    assert plugin.transform_prompt("p") == "p"


def test_plugin_uses_the_store_settings_templates(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "prompt.j2").write_text("{% for task in tasks %}[{{ task.id }}]{% endfor %} {{ prompt }}")
    store = BackgroundStore(FollowupSettings(relay_dir=tmp_path / "relay", template_dir=templates))
    finish(store, "t1")
    assert FollowupPlugin(store).transform_prompt("go") == "[t1] go"


def test_a_new_plugin_sees_an_edited_template(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    template = templates / "prompt.j2"
    template.write_text("v1 {{ prompt }}")
    settings = FollowupSettings(relay_dir=tmp_path / "relay", template_dir=templates)
    first = BackgroundStore(settings)
    finish(first, "t1")
    assert FollowupPlugin(first).transform_prompt("go") == "v1 go"
    template.write_text("v2 {{ prompt }}")
    second = BackgroundStore(settings)
    finish(second, "t1")
    assert FollowupPlugin(second).transform_prompt("go") == "v2 go"
