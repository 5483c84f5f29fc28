"""followups for LangChain agents (``langchain.agents.create_agent``, LangGraph underneath).

Extension points of LangChain used here, all public:

- ``AgentMiddleware`` (``langchain.agents.middleware``): the ``before_model`` /
  ``abefore_model`` hook returns a state update that appends the reminder to the agent's
  ``messages`` as a ``HumanMessage`` (a user-role turn, never the system prompt), the
  ``after_model`` / ``aafter_model`` hook confirms it, and the ``after_agent`` / ``aafter_agent``
  hook, which runs however the run ends (a final answer, a structured-output tool response, a
  ``return_direct`` tool), waits while subagents are still running and returns
  ``jump_to="model"`` (``hook_config(can_jump_to=["model"])``); the ``before_agent`` hook starts
  each run's count of those. Both forms of each hook are implemented,
  so the same middleware serves ``invoke``/``stream`` and ``ainvoke``/``astream``;
- ``Runtime.execution_info.thread_id`` (LangGraph) to pick each conversation's session, and the
  ``RunnableConfig`` a tool function receives (its ``configurable.thread_id``) for the tools;
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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, ToolException
from langgraph.runtime import Runtime

from ..blocking import thread_runs_event_loop, wait_for_notification_blocking
from ..delivery import METADATA_KEY, delivery_metadata, parse_delivery_metadata, settle_from_history, take_followup
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..session import Session
from ..tools import TaskRequest, Tool, ToolOutcome, task_tools
from ._idle import check_idle_options

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


class FollowupMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Deliver the store's pending notifications into a LangChain agent, once each.

    ``create_agent(model, tools, middleware=[FollowupMiddleware(store)])``. Before each model
    call (``before_model``), pending notifications are leased (:func:`followups.take_followup`)
    and rendered into ONE ``HumanMessage`` that the hook's state update appends to
    ``messages``. From there it is ordinary history: this model call and every later one see it
    once, and it is never added again. Its id starts with :data:`REMINDER_ID_PREFIX`, and its
    ``additional_kwargs["followups"]`` holds the lease id and notification ids.

    **Sessions.** A conversation is a LangGraph ``thread_id`` (``config["configurable"]``): its
    reminders come from ``store.session(thread_id)``, the session the task tools of
    :func:`langchain_task_tools` start its subagents in, so two threads never see each other's
    results. Runs without a thread id use ``store`` itself. ``sessions_by_thread=False`` uses
    ``store`` for every thread.

    **Settling, from the state, through the ledger.** Nothing unsettled lives only in this object:
    each reminder is a ledger lease, and its message names it. ``after_model`` (the model call
    succeeded) confirms the reminders it carried. Every ``before_model`` settles the conversation
    from the state it gets: a reminder message in the state is confirmed (a checkpointer saved it,
    or the caller passed the history back in; a history reloaded after its lease expired is
    acknowledged, never sent twice), and any other open lease of the conversation's session is
    given back, at its place in the queue, and goes out in that call's reminder: its message died
    with a failed run. A rebuilt agent, a new middleware object or another process therefore
    recovers what an old one held; until the conversation runs again, an abandoned lease comes
    back by itself after ``settings.delivery_lease_seconds``. A failure is not settled from inside
    the failed model call (``wrap_model_call``) because a retrying middleware may still send the
    same request again and a checkpointer may still save it.

    **Idle wake-up** (``resume_when_idle=True``, the default): when the run is about to end while
    subagents of the conversation are live, whatever ended it (a final answer, a structured-output
    tool response, a ``return_direct`` tool, another middleware's ``jump_to="end"``; not an
    assistant turn whose tool calls have no results), ``after_agent`` waits for the next result
    (at most ``idle_timeout`` seconds per wait; None waits while subagents are live), adds its
    reminder and jumps back to the model (``jump_to="model"``), at most ``max_idle_resumes``
    times per run. The sync hook blocks the thread running ``invoke`` (on a thread that runs an
    event loop it does not wait, and the result stays pending); the async one awaits.

    Contract: the conversation's session is this middleware's to settle, and runs of one
    conversation run one at a time (LangGraph requires this of a thread; without thread ids, do
    not run two agent runs with this middleware at once). Hooks may be called from any thread
    (``invoke`` runs them on the caller's thread, which must run no event loop). Put this
    middleware last in ``middleware=[...]``: its ``before_model`` then runs right before the model
    call, so no other hook (a summarizer, say) rewrites the messages between the reminder and the
    model.
    """

    def __init__(
        self,
        store: Session,
        renderer: ReminderRenderer | None = None,
        *,
        sessions_by_thread: bool = True,
        resume_when_idle: bool = True,
        idle_timeout: float | None = None,
        max_idle_resumes: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(store, Session):
            raise TypeError(f"store must be a followups.BackgroundStore or Session, got {type(store).__name__}")
        check_idle_options(idle_timeout, max_idle_resumes)
        self.store = store
        self.renderer = renderer
        self.sessions_by_thread = sessions_by_thread
        self.resume_when_idle = resume_when_idle
        self.idle_timeout = idle_timeout
        self.max_idle_resumes = max_idle_resumes
        self._lock = threading.Lock()
        # Leases this object put into a state whose model call has not returned yet: before_model
        # must not confirm them just because they are in the state.
        self._sending: dict[str | None, set[str]] = {}
        self._resumes: dict[str | None, int] = {}
        self._threads_seen: set[str | None] = set()
        # Leases this object has seen settled, so a long history is not re-settled at every call
        # (only a cache: the ledger's settle and acknowledge are idempotent).
        self._settled: dict[str, None] = {}

    def session_for(self, thread_id: str | None) -> Session:
        """The session of a conversation: ``store.session(thread_id)``, or ``store``."""
        if thread_id is None or not self.sessions_by_thread:
            return self.store
        return self.store.session(thread_id)

    def before_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """A run starts: its idle wake-ups are counted from zero."""
        with self._lock:
            self._resumes.pop(_thread_id(runtime), None)
        return None

    async def abefore_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`before_agent` for ``ainvoke``/``astream``."""
        return self.before_agent(state, runtime)

    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Settle the conversation against ``state``, then lease what is pending; returns
        ``{"messages": [reminder]}``, or None when nothing is pending."""
        return self._deliver(state, runtime)

    async def abefore_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`before_model` for ``ainvoke``/``astream``. Never suspends, so a cancellation
        cannot fall between the lease and the state update."""
        return self._deliver(state, runtime)

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Confirm the reminders in ``state``: the model call that read them succeeded."""
        self._confirm_sent(state, runtime)
        return None

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`after_model` for ``ainvoke``/``astream``."""
        self._confirm_sent(state, runtime)
        return None

    @hook_config(can_jump_to=["model"])
    def after_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """The run is about to end, however it got there (a final answer, a structured-output
        tool response, a ``return_direct`` tool, another middleware's ``jump_to="end"``): with
        live subagents, wait for the next result and go back to the model with its reminder."""
        session = self.session_for(_thread_id(runtime))
        if not self._should_wait(state, runtime, session):
            return None
        if thread_runs_event_loop() is not None and not session.pending_count():
            # A sync invoke on a thread running an event loop (a notebook, say): waiting would
            # block that loop, maybe the pool's own; the run ends and the result stays pending.
            return None
        while session.live_count() and not session.pending_count():
            if not wait_for_notification_blocking(session, self.idle_timeout):
                break
        return self._resume(session, runtime)

    @hook_config(can_jump_to=["model"])
    async def aafter_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`after_agent` for ``ainvoke``/``astream``."""
        session = self.session_for(_thread_id(runtime))
        if not self._should_wait(state, runtime, session):
            return None
        while session.live_count() and not session.pending_count():
            if not await session.wait_for_notification(self.idle_timeout):
                break
        return self._resume(session, runtime)

    def unsettled_task_ids(self) -> tuple[str, ...]:
        """The ids of tasks whose reminder this object put into a state whose model call has
        not returned (the call is under way, or its run failed and its conversation has not run
        since). The ledger's own view, across processes, is ``session.leases()``."""
        with self._lock:
            sending = {lease_id for leases in self._sending.values() for lease_id in leases}
        found: list[str] = []
        for session in self._known_sessions():
            found.extend(task_id for lease in session.leases() if lease.id in sending for task_id in lease.task_ids)
        return tuple(found)

    # -- internals ------------------------------------------------------------------------

    def _known_sessions(self) -> list[Session]:
        with self._lock:
            threads = list(self._threads_seen)
        return [self.session_for(thread) for thread in threads]

    def _deliver(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        thread_id = _thread_id(runtime)
        session = self.session_for(thread_id)
        carried = _carried(state["messages"])
        with self._lock:
            self._threads_seen.add(thread_id)
            # This object's reminders whose model call has not returned: added by after_model for
            # the call about to be made, or saved by a checkpointer from a failed call and now
            # resent. The call's after_model settles them.
            sending = self._sending.get(thread_id, set())
            in_flight = {lease_id for lease_id, _ in carried if lease_id in sending}
            # a lease of this object missing from the state died with a failed run: given back below
            self._sending[thread_id] = in_flight
            known = {lease_id for lease_id, _ in carried if lease_id in self._settled}
        settle_from_history(session, carried, give_back_absent=True, in_flight=in_flight | known)
        self._remember_settled(lease_id for lease_id, _ in carried if lease_id not in in_flight)
        if in_flight:
            return None  # this call already carries a reminder; the next one takes what is new
        return self._take(session, thread_id)

    def _take(self, session: Session, thread_id: str | None) -> dict[str, Any] | None:
        delivery = take_followup(session, self.renderer)
        if delivery is None:
            return None
        with self._lock:
            self._sending.setdefault(thread_id, set()).add(delivery.lease_id)
        message = HumanMessage(
            content=delivery.text,
            id=f"{REMINDER_ID_PREFIX}{delivery.lease_id}",
            additional_kwargs={METADATA_KEY: delivery_metadata(delivery)},
        )
        return {"messages": [message]}

    def _confirm_sent(self, state: AgentState[Any], runtime: Runtime[Any]) -> Session:
        thread_id = _thread_id(runtime)
        session = self.session_for(thread_id)
        with self._lock:
            sending = self._sending.get(thread_id)
            if not sending:
                return session
            sent = [lease_id for lease_id, _ in _carried(state["messages"]) if lease_id in sending]
            sending.difference_update(sent)
        for lease_id in sent:
            session.settle(lease_id, delivered=True)
        self._remember_settled(sent)
        return session

    def _remember_settled(self, lease_ids: Iterable[str]) -> None:
        with self._lock:
            for lease_id in lease_ids:
                self._settled[lease_id] = None
            while len(self._settled) > _MAX_REMEMBERED_LEASES:
                del self._settled[next(iter(self._settled))]

    def _should_wait(self, state: AgentState[Any], runtime: Runtime[Any], session: Session) -> bool:
        if not self.resume_when_idle:
            return False
        messages = state["messages"]
        last = messages[-1] if messages else None
        if isinstance(last, AIMessage) and last.tool_calls:
            return False  # a model call now would leave these tool calls without results
        if not session.live_count() and not session.pending_count():
            return False
        with self._lock:
            return self._resumes.get(_thread_id(runtime), 0) < self.max_idle_resumes

    def _resume(self, session: Session, runtime: Runtime[Any]) -> dict[str, Any] | None:
        thread_id = _thread_id(runtime)
        update = self._take(session, thread_id)
        if update is None:
            return None
        with self._lock:
            self._resumes[thread_id] = self._resumes.get(thread_id, 0) + 1
        return {**update, "jump_to": "model"}


def _thread_id(runtime: Runtime[Any]) -> str | None:
    info = runtime.execution_info
    return None if info is None else info.thread_id


def _carried(messages: Sequence[AnyMessage]) -> list[tuple[str, tuple[str, ...]]]:
    """The leases named by the reminder messages in ``messages``."""
    found = []
    for message in messages:
        if isinstance(message, HumanMessage) and (message.id or "").startswith(REMINDER_ID_PREFIX):
            parsed = parse_delivery_metadata(message.additional_kwargs.get(METADATA_KEY))
            if parsed is not None:
                found.append(parsed)
    return found


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
    return _structured_tool(tool, lambda config: tool)


def _structured_tool(template: Tool, resolve: Callable[[RunnableConfig | None], Tool]) -> StructuredTool:
    """A ``StructuredTool`` with ``template``'s name, description and schema that runs the tool
    ``resolve(config)`` returns for the call's ``RunnableConfig``."""
    name = template.name

    def run_sync(config: RunnableConfig, **arguments: Any) -> str:
        tool = resolve(config)
        if tool.is_async:
            raise TypeError(f"tool {name!r} has an async handler; run the agent with ainvoke/astream")
        return _content_or_raise(tool.invoke_sync(arguments))

    async def run_async(config: RunnableConfig, **arguments: Any) -> str:
        return _content_or_raise(await resolve(config).invoke(arguments))

    return StructuredTool.from_function(
        func=run_sync,
        coroutine=run_async,
        name=name,
        description=template.description,
        args_schema=template.parameters,
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
    pool: SubagentPool,
    run_subagent: Callable[[TaskRequest], Awaitable[Any]],
    *,
    sessions_by_thread: bool = True,
) -> list[StructuredTool]:
    """:func:`followups.task_tools` (``task``, ``task_status``, ``cancel_task``…) over ``pool``,
    as LangChain tools for ``create_agent(model, tools=...)``.

    ``run_subagent`` is an async callable taking a :class:`~followups.TaskRequest`. Each call
    acts in the session of its conversation: ``store.session(thread_id)`` for a LangGraph
    ``thread_id`` in the call's config (the session :class:`FollowupMiddleware` delivers from),
    else the pool's own; ``sessions_by_thread=False`` always uses the pool's. See
    :func:`to_langchain_tool` for the threads they may run on; with a
    :class:`~followups.BlockingPool`, pass ``blocking.pool`` and a sync ``invoke`` needs no event
    loop of its own.
    """
    templates = task_tools(pool, run_subagent)
    lock = threading.Lock()
    by_session: dict[str, dict[str, Tool]] = {}

    def tools_for(config: RunnableConfig | None) -> dict[str, Tool]:
        thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
        if thread_id is None or not sessions_by_thread:
            session = pool.session
        else:
            session = pool.session.session(str(thread_id))
        with lock:
            tools = by_session.get(session.id)
            if tools is None:
                if len(by_session) >= _MAX_CACHED_SESSIONS:
                    del by_session[next(iter(by_session))]
                tools = {tool.name: tool for tool in task_tools(pool, run_subagent, session=session)}
                by_session[session.id] = tools
        return tools

    def resolver(name: str) -> Callable[[RunnableConfig | None], Tool]:
        return lambda config: tools_for(config)[name]

    return [_structured_tool(template, resolver(template.name)) for template in templates]


_MAX_CACHED_SESSIONS = 1024
_MAX_REMEMBERED_LEASES = 4096
