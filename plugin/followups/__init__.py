"""followups: deliver background subagent results to an agent loop as bounded
``<system-reminder>`` messages.

Data path: a subagent's result goes to :class:`BackgroundStore` (large outputs relayed to
files by :class:`OutputRelay`, long errors capped), which keeps the record and queues one
notification; at the loop's next boundary a hook (:class:`FollowupPlugin`) drains the queue
and :class:`ReminderRenderer` renders one user-role reminder from Jinja templates.
"""

from __future__ import annotations

from .delivery import ReminderDelivery, take_delivery, take_followup
from .errors import CapacityExceeded, FollowupsError, TemplateError
from .hooks import (
    FollowupHook,
    FollowupPlugin,
    HookRegistry,
    UserMessage,
    followup_from_store,
    prepend_pending_notifications,
    take_reminder,
)
from .loop import (
    AgentLoop,
    AssistantMessage,
    LoopLimitExceeded,
    Message,
    Model,
    ScriptedModel,
    ScriptExhausted,
    ToolCall,
    ToolResultMessage,
    tool_call,
)
from .pool import CANCELLED_BY_REQUEST, SESSION_CLOSED, SubagentPool, render_result
from .relay import OutputRelay, RelayOutcome
from .reminders import RenderedReminder, ReminderRenderer, default_template_dir
from .settings import FollowupSettings, default_relay_dir
from .state import (
    BackgroundTask,
    LifecycleEvent,
    TaskFinished,
    TaskNotification,
    TaskStarted,
    TaskState,
    TaskStatus,
)
from .store import DEFAULT_CANCEL_REASON, BackgroundStore
from .tools import TaskRequest, Tool, ToolOutcome, task_tools
from .truncation import head_cap

__version__ = "0.1.0"

__all__ = [
    "AgentLoop",
    "AssistantMessage",
    "CANCELLED_BY_REQUEST",
    "DEFAULT_CANCEL_REASON",
    "SESSION_CLOSED",
    "BackgroundStore",
    "BackgroundTask",
    "CapacityExceeded",
    "FollowupHook",
    "FollowupPlugin",
    "FollowupSettings",
    "FollowupsError",
    "HookRegistry",
    "LoopLimitExceeded",
    "Message",
    "Model",
    "LifecycleEvent",
    "OutputRelay",
    "RelayOutcome",
    "RenderedReminder",
    "ReminderDelivery",
    "ScriptExhausted",
    "ScriptedModel",
    "SubagentPool",
    "ReminderRenderer",
    "TaskFinished",
    "TaskNotification",
    "TaskRequest",
    "TaskStarted",
    "TaskState",
    "TaskStatus",
    "TemplateError",
    "Tool",
    "ToolCall",
    "ToolOutcome",
    "ToolResultMessage",
    "UserMessage",
    "default_relay_dir",
    "default_template_dir",
    "followup_from_store",
    "head_cap",
    "prepend_pending_notifications",
    "render_result",
    "take_delivery",
    "take_followup",
    "take_reminder",
    "task_tools",
    "tool_call",
]
