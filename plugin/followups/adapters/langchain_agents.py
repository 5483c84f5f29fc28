"""followups for LangChain agents (``langchain.agents.create_agent``, LangGraph underneath).

Extension points of LangChain used here, all public:

- ``AgentMiddleware`` (``langchain.agents.middleware``): the ``before_model`` /
  ``abefore_model`` hook returns a state update that appends the reminder to the agent's
  ``messages`` as a ``HumanMessage`` (a user-role turn, never the system prompt), and the
  ``after_model`` / ``aafter_model`` hook confirms it. Both forms of each hook are implemented,
  so the same middleware serves ``invoke``/``stream`` and ``ainvoke``/``astream``;
- ``Runtime.execution_info.thread_id`` (LangGraph) to tell conversations apart;
- ``StructuredTool`` (``langchain_core.tools``) with a pydantic ``args_schema``, a sync ``func``
  and an async ``coroutine``, and ``ToolException`` with ``handle_tool_error=True`` for the
  results the model should read as errors.

Public names:

- :class:`FollowupMiddleware`: delivers pending background results into the agent state before
  a model call, with the :class:`followups.ReminderDelivery` transaction (see its docstring for
  when a delivery is confirmed or given back).
- :func:`to_langchain_tool` / :func:`to_langchain_tools`: :class:`followups.Tool`\\ s as LangChain
  tools; :func:`langchain_task_tools`: :func:`followups.task_tools` as LangChain tools.
- :func:`is_reminder_message` and :data:`REMINDER_ID_PREFIX`: recognise the messages this
  middleware added.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage
from langchain_core.tools import StructuredTool, ToolException
from langgraph.runtime import Runtime

from ..delivery import ReminderDelivery, take_followup
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..store import BackgroundStore
from ..tools import TaskRequest, Tool, ToolOutcome, task_tools

__all__ = [
    "REMINDER_ID_PREFIX",
    "FollowupMiddleware",
    "is_reminder_message",
    "langchain_task_tools",
    "to_langchain_tool",
    "to_langchain_tools",
]

REMINDER_ID_PREFIX = "followups-reminder-"
"""Every reminder message :class:`FollowupMiddleware` adds has an id that starts with this."""


def is_reminder_message(message: BaseMessage) -> bool:
    """True for a reminder message added by :class:`FollowupMiddleware` (found by its id)."""
    return isinstance(message, HumanMessage) and (message.id or "").startswith(REMINDER_ID_PREFIX)


class _Unsettled:
    """A reminder placed in some agent state whose fate is not known yet."""

    __slots__ = ("delivery", "message_id", "thread_id")

    def __init__(self, delivery: ReminderDelivery, message_id: str, thread_id: str | None) -> None:
        self.delivery = delivery
        self.message_id = message_id
        self.thread_id = thread_id


class FollowupMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Deliver the store's pending notifications into a LangChain agent, once each.

    ``create_agent(model, tools, middleware=[FollowupMiddleware(store)])``. Before each model
    call (``before_model``), pending notifications are drained (:func:`followups.take_followup`)
    and rendered into ONE ``HumanMessage`` that the hook's state update appends to
    ``messages``. From there it is ordinary history: this model call and every later one see it
    once, and it is never added again. Its id starts with :data:`REMINDER_ID_PREFIX`.

    Settling the delivery. The reminder is in the state as soon as ``before_model`` returns,
    but the model call after it can still fail, and what then becomes of the state depends on
    the run, so the middleware decides from the state itself, never from the failure:

    - ``after_model`` (the model call succeeded) confirms every unsettled reminder whose message
      is in the state;
    - the next ``before_model`` on the same conversation first settles what is left: a reminder
      whose message is in the state was kept (a checkpointer saved it, or the caller passed the
      streamed history back in) and is confirmed; one whose message is missing died with the
      failed run and is given back, at the front of the queue, so the drain that follows
      delivers it again, in the same single reminder as anything newer.

    So without a checkpointer a failed call's reminder arrives in the next run's first model
    call, and with one, resuming the thread (``invoke(None, config)``) or sending it new input
    shows it once, from the saved state. A conversation is a LangGraph ``thread_id`` (from
    ``config["configurable"]``); runs without one form a single conversation. A failure is not
    settled from inside the failed model call (``wrap_model_call``) because a retrying
    middleware may still send the same request again and a checkpointer may still save it;
    the next step's state is what tells.

    Contract: runs of one conversation run one at a time (LangGraph requires this of a
    thread; without thread ids, do not run two agent runs with this middleware at once).
    Runs on different threads may overlap. Until a failed run's conversation runs again, its
    notifications are neither pending nor delivered. Hooks may be called from any thread
    (``invoke`` runs them on the caller's thread); the bookkeeping is locked and never blocks
    on I/O. Put this middleware last in ``middleware=[...]``: its ``before_model`` then runs
    right before the model call, so no other hook (a summarizer, say) rewrites the messages
    between the reminder and the model.
    """

    def __init__(self, store: BackgroundStore, renderer: ReminderRenderer | None = None) -> None:
        super().__init__()
        self.store = store
        self.renderer = renderer
        self._lock = threading.Lock()
        self._unsettled: dict[str, _Unsettled] = {}

    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Settle this conversation's leftover reminders against ``state``, then drain the store;
        returns ``{"messages": [reminder]}``, or None when nothing is pending."""
        return self._deliver(state, runtime)

    async def abefore_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`before_model` for ``ainvoke``/``astream``. Never suspends, so a cancellation
        cannot fall between the drain and the state update."""
        return self._deliver(state, runtime)

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Confirm the reminders in ``state``: the model call that read them succeeded."""
        self._confirm_present(state)
        return None

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`after_model` for ``ainvoke``/``astream``."""
        self._confirm_present(state)
        return None

    def unsettled_task_ids(self) -> tuple[str, ...]:
        """The ids of tasks whose reminder sits in some agent state, not yet confirmed or given
        back (a run failed and its conversation has not run since)."""
        with self._lock:
            return tuple(task_id for record in self._unsettled.values() for task_id in record.delivery.task_ids)

    def _deliver(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        thread_id = _thread_id(runtime)
        present = _message_ids(state["messages"])
        with self._lock:
            leftovers = [record for record in self._unsettled.values() if record.thread_id == thread_id]
            for record in leftovers:
                del self._unsettled[record.message_id]
        # Newest first: each give_back puts its batch at the front of the queue, so the oldest
        # batch, given back last, ends up in front and the original order is kept.
        for record in reversed(leftovers):
            if record.message_id in present:
                record.delivery.confirm()
            else:
                record.delivery.give_back()
        delivery = take_followup(self.store, self.renderer)
        if delivery is None:
            return None
        message_id = f"{REMINDER_ID_PREFIX}{uuid.uuid4().hex}"
        with self._lock:
            self._unsettled[message_id] = _Unsettled(delivery, message_id, thread_id)
        return {"messages": [HumanMessage(content=delivery.text, id=message_id)]}

    def _confirm_present(self, state: AgentState[Any]) -> None:
        with self._lock:
            if not self._unsettled:
                return
            present = _message_ids(state["messages"])
            confirmed = [self._unsettled.pop(message_id) for message_id in present & self._unsettled.keys()]
        for record in confirmed:
            record.delivery.confirm()


def _thread_id(runtime: Runtime[Any]) -> str | None:
    info = runtime.execution_info
    return None if info is None else info.thread_id


def _message_ids(messages: Sequence[AnyMessage]) -> set[str]:
    return {message.id for message in messages if message.id is not None}


def _content_or_raise(outcome: ToolOutcome) -> str:
    """The tool message content for ``outcome``; an error outcome raises ``ToolException``,
    which the tool turns into a ``status="error"`` tool message."""
    if outcome.is_error:
        raise ToolException(outcome.content)
    return outcome.content


def to_langchain_tool(tool: Tool) -> StructuredTool:
    """``tool`` as a LangChain ``StructuredTool``: the same name, description and pydantic
    schema, run through :meth:`followups.Tool.invoke` / :meth:`~followups.Tool.invoke_sync`. The
    outcome's text is the tool message's content; an error outcome (including a handler that
    raised) becomes a tool message with ``status="error"``. Cancellation propagates.

    Both call paths are provided. The sync one (``invoke``; LangGraph's ``ToolNode`` runs it in
    a worker thread) calls a synchronous handler there, so :meth:`SubagentPool.spawn` hands
    itself to the pool's event loop: run a sync agent in a worker thread
    (``trio.to_thread.run_sync`` / ``asyncio.to_thread``), never on the pool's loop thread,
    or the two wait for each other forever. The async one (``ainvoke``) runs a synchronous
    handler inline, so parallel calls are admitted in the model's order. An async handler
    works only from ``ainvoke``; its sync path raises ``TypeError`` saying so.
    """
    name = tool.name

    def run_sync(**arguments: Any) -> str:
        if tool.is_async:
            raise TypeError(f"tool {name!r} has an async handler; run the agent with ainvoke/astream")
        return _content_or_raise(tool.invoke_sync(arguments))

    async def run_async(**arguments: Any) -> str:
        return _content_or_raise(await tool.invoke(arguments))

    return StructuredTool.from_function(
        func=run_sync,
        coroutine=run_async,
        name=name,
        description=tool.description,
        args_schema=tool.parameters,
        infer_schema=False,
        handle_tool_error=True,
    )


def to_langchain_tools(tools: Iterable[Tool]) -> list[StructuredTool]:
    """Each of ``tools`` through :func:`to_langchain_tool`, in order. Raises ``ValueError`` if
    two share a name."""
    converted: list[StructuredTool] = []
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise ValueError(f"two tools are named {tool.name!r}; tool names must be unique")
        seen.add(tool.name)
        converted.append(to_langchain_tool(tool))
    return converted


def langchain_task_tools(
    pool: SubagentPool, run_subagent: Callable[[TaskRequest], Awaitable[Any]]
) -> list[StructuredTool]:
    """:func:`followups.task_tools` (``task``, ``task_status``, ``cancel_task``) over ``pool``,
    as LangChain tools for ``create_agent(model, tools=...)``. See :func:`to_langchain_tool` for
    the threads they may run on."""
    return to_langchain_tools(task_tools(pool, run_subagent))
