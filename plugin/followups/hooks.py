"""The agent-loop hooks: at a boundary, take what is pending and deliver one
``<system-reminder>``, as a follow-up user message after a turn or prepended to the next user
prompt.

The hooks never take the loop down: when a durable store cannot be reached, they log it and
deliver nothing this time (the notifications stay in the store for a later boundary).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from .delivery import renderer_for, take_delivery, take_followup, take_prompt_reminder
from .errors import StoreUnavailable
from .reminders import RenderedReminder, ReminderRenderer
from .session import Session
from .state import TaskNotification

__all__ = [
    "FollowupHook",
    "FollowupPlugin",
    "HookRegistry",
    "UserMessage",
    "followup_from_store",
    "prepend_pending_notifications",
    "take_reminder",
]

logger = logging.getLogger("followups.hooks")


class UserMessage(BaseModel):
    """A user-role message for the model. Background results always travel in one of these,
    never in the system prompt. ``notification_ids`` names the notifications it carries (not
    part of the text): keep it with the message to recognise a redelivery."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user"] = "user"
    content: str
    notification_ids: tuple[str, ...] = ()


FollowupHook = Callable[[], Awaitable[list[UserMessage]]]


class HookRegistry(Protocol):
    """What :meth:`FollowupPlugin.register` needs of an agent loop."""

    def register_hook(self, name: str, hook: Callable[..., Any]) -> None: ...


def take_reminder(
    store: Session,
    fit: Callable[[Sequence[TaskNotification]], RenderedReminder],
    *,
    max_chars: int | None = None,
    item_overhead: int = 0,
) -> str | None:
    """Take the pending notifications, render what fits with ``fit``, and leave the rest
    pending; the reminder counts as delivered once returned. None when nothing is pending.
    A caller that only learns later whether it reached the model uses :func:`take_delivery`."""
    delivery = take_delivery(store, fit, max_chars=max_chars, item_overhead=item_overhead)
    if delivery is None:
        return None
    delivery.confirm()
    return delivery.text


def followup_from_store(store: Session, renderer: ReminderRenderer | None = None) -> FollowupHook:
    """The ``get_followup_messages`` hook: ``await hook()`` takes the pending notifications
    and returns one batched :class:`UserMessage` (within ``settings.reminder_budget_chars``),
    or ``[]`` when nothing is pending or the store cannot be reached. Never suspends, so a
    cancelled caller cannot lose a taken batch."""
    render = renderer_for(store, renderer)

    async def get_followup_messages() -> list[UserMessage]:
        try:
            delivery = take_followup(store, render)
        except StoreUnavailable as exc:
            logger.warning("no reminder this turn: %s", exc)
            return []
        if delivery is None:
            return []
        delivery.confirm()
        return [UserMessage(content=delivery.text, notification_ids=delivery.notification_ids)]

    return get_followup_messages


def prepend_pending_notifications(
    prompt: str, store: Session | None, renderer: ReminderRenderer | None = None
) -> str:
    """``prompt`` with a reminder of the pending notifications prepended; ``prompt`` itself
    when ``store`` is None, nothing is pending, or the store cannot be reached."""
    if store is None:
        return prompt
    try:
        delivery = take_prompt_reminder(store, prompt, renderer)
    except StoreUnavailable as exc:
        logger.warning("no reminder in this prompt: %s", exc)
        return prompt
    if delivery is None:
        return prompt
    delivery.confirm()
    return delivery.text


class FollowupPlugin:
    """The follow-up hooks of one session (a store is its default session), ready to register
    on an agent loop.

    - ``get_followup_messages()`` (async): at the end of a turn, the batched reminder as a
      one-element list of :class:`UserMessage`, or ``[]``.
    - ``transform_prompt(prompt)``: before a user prompt is sent, the prompt with the reminder
      prepended.

    Both take from the same queue, so whichever boundary comes first delivers a notification,
    and it is delivered once.
    """

    def __init__(self, store: Session, renderer: ReminderRenderer | None = None) -> None:
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
