"""followups: deliver background subagent results to an agent loop as bounded
``<system-reminder>`` messages.

Data path: a subagent's result goes to :class:`BackgroundStore` (large outputs relayed to
files by :class:`OutputRelay`, long errors capped), which keeps the record and queues one
notification; at the loop's next boundary a hook (:class:`FollowupPlugin`) drains the queue
and :class:`ReminderRenderer` renders one user-role reminder from Jinja templates.
"""

from __future__ import annotations

from .blocking import BlockingPool
from .context import Inbox, TaskContext, current_task
from .delivery import ReminderDelivery, take_delivery, take_followup
from .errors import (
    CapacityExceeded,
    FollowupsError,
    InboxClosed,
    InboxError,
    InboxFull,
    NameInUse,
    NoInbox,
    PendingLimitReached,
    PoolClosed,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskIdInUse,
    TemplateError,
    TransferConflict,
    UnknownTask,
)
from .events import Subscription
from .external import ExternalTask, TaskSpec
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
from .pool import SubagentPool, render_result
from .relay import OutputRelay, RelayOutcome
from .reminders import RenderedReminder, ReminderRenderer, default_template_dir
from .session import (
    CANCELLED_BY_REQUEST,
    DEFAULT_CANCEL_REASON,
    SESSION_CLOSED,
    CancelOutcome,
    Session,
    SessionEnd,
)
from .settings import FollowupSettings, default_relay_dir
from .state import (
    DEFAULT_SESSION,
    BackgroundTask,
    Lagged,
    LeaseInfo,
    LifecycleEvent,
    RunRef,
    TaskCancelRequested,
    TaskFinished,
    TaskKind,
    TaskNotification,
    TaskProgress,
    TaskRegistered,
    TaskStarted,
    TaskState,
    TaskStatus,
    TaskTransferred,
)
from .store import BackgroundStore
from .tools import TaskRequest, Tool, ToolOutcome, task_tools
from .truncation import head_cap

__version__ = "0.1.0"

__all__ = [
    "AgentLoop",
    "AssistantMessage",
    "BackgroundStore",
    "BackgroundTask",
    "BlockingPool",
    "CANCELLED_BY_REQUEST",
    "CancelOutcome",
    "CapacityExceeded",
    "current_task",
    "DEFAULT_CANCEL_REASON",
    "default_relay_dir",
    "DEFAULT_SESSION",
    "default_template_dir",
    "ExternalTask",
    "followup_from_store",
    "FollowupHook",
    "FollowupPlugin",
    "FollowupsError",
    "FollowupSettings",
    "head_cap",
    "HookRegistry",
    "Inbox",
    "InboxClosed",
    "InboxError",
    "InboxFull",
    "Lagged",
    "LeaseInfo",
    "LifecycleEvent",
    "LoopLimitExceeded",
    "Message",
    "Model",
    "NameInUse",
    "NoInbox",
    "OutputRelay",
    "PendingLimitReached",
    "PoolClosed",
    "prepend_pending_notifications",
    "RelayOutcome",
    "ReminderDelivery",
    "ReminderRenderer",
    "render_result",
    "RenderedReminder",
    "RunRef",
    "ScriptedModel",
    "ScriptExhausted",
    "Session",
    "SESSION_CLOSED",
    "SessionEnd",
    "StoreUnavailable",
    "SubagentPool",
    "Subscription",
    "take_delivery",
    "take_followup",
    "take_reminder",
    "task_tools",
    "TaskAlreadyFinished",
    "TaskCancelRequested",
    "TaskContext",
    "TaskFinished",
    "TaskIdInUse",
    "TaskKind",
    "TaskNotification",
    "TaskProgress",
    "TaskRegistered",
    "TaskRequest",
    "TaskSpec",
    "TaskStarted",
    "TaskState",
    "TaskStatus",
    "TaskTransferred",
    "TemplateError",
    "Tool",
    "tool_call",
    "ToolCall",
    "ToolOutcome",
    "ToolResultMessage",
    "TransferConflict",
    "UnknownTask",
    "UserMessage",
]
