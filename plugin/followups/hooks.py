"""The agent-loop hooks: drain the store at a boundary and deliver one ``<system-reminder>``,
as a follow-up user message after a turn or prepended to the next user prompt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from .delivery import renderer_for, take_delivery, take_followup
from .reminders import RenderedReminder, ReminderRenderer
from .state import TaskNotification
from .store import BackgroundStore

__all__ = [
    "FollowupHook",
    "FollowupPlugin",
    "HookRegistry",
    "UserMessage",
    "followup_from_store",
    "prepend_pending_notifications",
    "take_reminder",
]


class UserMessage(BaseModel):
    """A user-role message for the model. Background results always travel in one of these,
    never in the system prompt."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user"] = "user"
    content: str


FollowupHook = Callable[[], Awaitable[list[UserMessage]]]


class HookRegistry(Protocol):
    """What :meth:`FollowupPlugin.register` needs of an agent loop."""

    def register_hook(self, name: str, hook: Callable[..., Any]) -> None: ...


def take_reminder(
    store: BackgroundStore, fit: Callable[[Sequence[TaskNotification]], RenderedReminder]
) -> str | None:
    """Drain ``store``, render what fits with ``fit``, and give the rest back to the queue.

    Returns None when nothing is pending. Nothing is lost: the notifications that ``fit``
    does not carry go back to the front of the queue in order, and if ``fit`` raises, all of
    them do before the error propagates. The reminder counts as delivered once returned; a
    caller that only learns later whether it reached the model uses :func:`take_delivery`.
    """
    delivery = take_delivery(store, fit)
    if delivery is None:
        return None
    delivery.confirm()
    return delivery.text


def followup_from_store(store: BackgroundStore, renderer: ReminderRenderer | None = None) -> FollowupHook:
    """The ``get_followup_messages`` hook: ``await hook()`` drains the store and returns one
    batched :class:`UserMessage` (within ``settings.reminder_budget_chars``), or ``[]`` when
    nothing is pending. Never suspends, so a cancelled caller cannot lose a drained batch."""
    render = renderer_for(store, renderer)

    async def get_followup_messages() -> list[UserMessage]:
        delivery = take_followup(store, render)
        if delivery is None:
            return []
        delivery.confirm()
        return [UserMessage(content=delivery.text)]

    return get_followup_messages


def prepend_pending_notifications(
    prompt: str, store: BackgroundStore | None, renderer: ReminderRenderer | None = None
) -> str:
    """``prompt`` with a reminder of the pending notifications prepended; ``prompt`` itself
    when ``store`` is None or nothing is pending."""
    if store is None:
        return prompt
    render = renderer_for(store, renderer)
    budget = store.settings.reminder_budget_chars
    text = take_reminder(store, lambda batch: render.fit_prompt(batch, prompt, budget))
    return prompt if text is None else text


class FollowupPlugin:
    """The follow-up hooks of one store, ready to register on an agent loop.

    - ``get_followup_messages()`` (async): at the end of a turn, the batched reminder as a
      one-element list of :class:`UserMessage`, or ``[]``.
    - ``transform_prompt(prompt)``: before a user prompt is sent, the prompt with the reminder
      prepended.

    Both drain the same queue, so whichever boundary comes first delivers a notification, and
    it is delivered once.
    """

    def __init__(self, store: BackgroundStore, renderer: ReminderRenderer | None = None) -> None:
        self.store = store
        self.renderer = renderer_for(store, renderer)
        self._followup = followup_from_store(store, self.renderer)

    async def get_followup_messages(self) -> list[UserMessage]:
        return await self._followup()

    def transform_prompt(self, prompt: str) -> str:
        return prepend_pending_notifications(prompt, self.store, self.renderer)

    def register(self, loop: HookRegistry) -> None:
        """Register ``get_followup_messages`` and ``transform_prompt`` on ``loop``."""
        loop.register_hook("get_followup_messages", self.get_followup_messages)
        loop.register_hook("transform_prompt", self.transform_prompt)
