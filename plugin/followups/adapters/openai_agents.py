"""followups for the OpenAI Agents SDK (``pip install 'followups[openai-agents]'``, import name ``agents``).

Extension points of the SDK used here:

- ``RunConfig.call_model_input_filter``: called by the runner right before every model call with
  the model input (``CallModelData`` in, ``ModelInputData`` out). The reminder goes in there, as
  one user-role input item at the end of the input.
- ``Runner.run``: :meth:`FollowupRunner.run` wraps it, because only the run's outcome says whether
  the reminder reached the history the caller keeps. The filter's changes are ephemeral: the
  runner builds each model input from the run's own items, so an injected item is neither in
  the next model call of the same run nor in ``RunResult.to_input_list()``. The wrapper
  therefore records every reminder it injected and where, puts it back at that place in every
  later model call of the run, and :meth:`FollowupRunResult.to_input_list` returns the history
  for the next run with the reminders in place.
- ``FunctionTool``: :func:`followup_function_tools` exposes the ``task``, ``task_status`` and
  ``cancel_task`` tools of :func:`followups.task_tools` with an async ``on_invoke_tool``, which
  the SDK awaits on the event loop thread, where :class:`~followups.SubagentPool` acts at once.

Settlement of the :class:`~followups.ReminderDelivery` taken at each model call is per run: a
run that returns confirms every reminder it carried (they are in the result's history); a run
that raises or is cancelled gives them all back, so the next run delivers them again. A run
that fails after the model saw a reminder discards the model's answer too, so delivering it
again keeps the history the caller keeps complete and free of repeats. An input item has no
metadata field that the SDK keeps and the API accepts, so each delivery is labelled
(:func:`followups.delivery.label_delivery`) and the first model call of every run settles, by
their exact text, the reminders its history (the input list, or the SDK ``Session``'s items)
already carries (:func:`followups.delivery.settle_from_texts`): a history saved by a process that
died holding a lease is not sent that reminder again, even after the lease expired.

Conversations: an SDK ``Session`` (``session=``) keeps the history itself; the runner maps it to
``store.session(session.session_id)`` (else the store's default session, or ``conversation=``)
and, since the SDK saves the run's items but never what the filter added, appends the run's
reminders to that ``Session`` before confirming them. Server-managed conversations
(``conversation_id=``, ``previous_response_id=``, ``auto_previous_response_id=``) keep the history
where the runner cannot check a reminder's place, so :meth:`FollowupRunner.run` refuses them. The
SDK runs on asyncio only.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner, RunResult, RunResultStreaming, TResponseInputItem
from agents.memory import Session as AgentsSession
from agents.run_config import CallModelData, ModelInputData
from agents.run_state import RunState
from agents.stream_events import StreamEvent
from agents.tool_context import ToolContext

from ..blocking import BlockingPool
from ..delivery import ReminderDelivery, label_delivery, settle_from_texts, take_followup
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..session import Session
from ..tools import TaskRequest, Tool, task_tools
from ._idle import check_idle_options, wait_for_result

__all__ = [
    "FollowupRunResult",
    "FollowupRunner",
    "FollowupStreamedRun",
    "PlacedReminder",
    "as_function_tool",
    "followup_function_tools",
    "place_reminders",
    "reminder_item",
    "user_texts",
]

ModelInputFilter = Callable[[CallModelData[Any]], ModelInputData | Awaitable[ModelInputData]]

_HISTORY_ELSEWHERE = ("conversation_id", "previous_response_id", "auto_previous_response_id")


def reminder_item(text: str) -> TResponseInputItem:
    """The user-role input item that carries a reminder: the shape the SDK itself gives a
    string input (``{"role": "user", "content": text}``)."""
    return {"role": "user", "content": text}


def user_texts(items: Sequence[object]) -> Iterator[str]:
    """The texts of the user-role message items in ``items`` (a string ``content``, or its
    ``input_text`` parts): where a reminder rides, and what recognises one in a history."""
    for item in items:
        if not isinstance(item, Mapping) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "input_text" and isinstance(part.get("text"), str):
                    yield part["text"]


@dataclass(frozen=True, slots=True)
class PlacedReminder:
    """A reminder a run delivered, and where.

    ``position`` counts the items of the run's own history (``RunResult.to_input_list()``, or
    the runner's model input during the run) that precede the reminder; other reminders are not
    counted. ``task_ids`` are the tasks it reports on.
    """

    position: int
    text: str
    task_ids: tuple[str, ...]


def place_reminders(
    history: Sequence[TResponseInputItem], reminders: Sequence[PlacedReminder]
) -> list[TResponseInputItem]:
    """``history`` with each reminder inserted as a user-role item at its ``position``.

    ``reminders`` must be in delivery order (ascending positions). A position beyond the end of
    ``history`` (a history shortened after the fact) puts the reminder at the end: a reminder is
    never dropped.
    """
    placed = list(history)
    for inserted, reminder in enumerate(reminders):
        placed.insert(min(reminder.position + inserted, len(placed)), reminder_item(reminder.text))
    return placed


@dataclass(frozen=True, slots=True)
class FollowupRunResult:
    """What :meth:`FollowupRunner.run` returns: the SDK's result and the reminders the run delivered.

    Continue the conversation with :meth:`to_input_list`, not ``result.to_input_list()``: the
    SDK's history lacks the reminders (the filter's changes are not recorded by the runner), and
    a reminder missing from the kept history would be seen once and then forgotten.
    """

    result: RunResult
    reminders: tuple[PlacedReminder, ...]
    idle_resumes: int = 0

    @property
    def final_output(self) -> Any:
        return self.result.final_output

    @property
    def interruptions(self) -> list[Any]:
        """The tool calls awaiting approval when the run paused (the SDK's ``interruptions``)."""
        return list(self.result.interruptions)

    def to_input_list(self) -> list[TResponseInputItem]:
        """The input list for the next run: the run's history with its reminders in place."""
        return place_reminders(self.result.to_input_list(), self.reminders)

    def to_state(self) -> RunState[Any, Any]:
        """The SDK's ``RunState`` of a paused run (``result.to_state()``), remembered with the
        reminders the run placed, so :meth:`FollowupRunner.run` resuming it puts them back in
        place. A state rebuilt elsewhere (``RunState.from_json``) is not recognised: its reminders
        are in no model input after the pause."""
        state = self.result.to_state()
        _remember_state(state, self.reminders)
        return state


_STATES: dict[int, tuple[weakref.ref[RunState[Any, Any]], tuple[PlacedReminder, ...]]] = {}


def _remember_state(state: RunState[Any, Any], reminders: tuple[PlacedReminder, ...]) -> None:
    for key in [key for key, (ref, _) in _STATES.items() if ref() is None]:
        del _STATES[key]
    _STATES[id(state)] = (weakref.ref(state), reminders)


def _reminders_of(state: RunState[Any, Any]) -> tuple[PlacedReminder, ...]:
    entry = _STATES.get(id(state))
    if entry is None or entry[0]() is not state:
        return ()
    return entry[1]


class _RunReminders:
    """The reminder bookkeeping of one run: the model input filter and the run's deliveries.

    Used on the event loop thread running the run. Only the run's own model calls get
    reminders: the first call, and later calls whose input continues the previous one (same
    agent or a handoff target of it, previous input as a strict prefix). A nested run, such as
    an agent used as a tool (which inherits the parent's ``RunConfig``), does not qualify, so it
    never takes the parent's notifications.
    """

    def __init__(
        self,
        store: Session,
        renderer: ReminderRenderer | None,
        user_filter: ModelInputFilter | None,
        placed: Sequence[PlacedReminder] = (),
        in_flight: Collection[str] = (),
    ) -> None:
        self._store = store
        self._in_flight = in_flight
        self._renderer = renderer
        self._user_filter = user_filter
        self._agent: Agent[Any] | None = None
        self._history: list[TResponseInputItem] = []
        self._placed: list[PlacedReminder] = list(placed)
        self._deliveries: list[ReminderDelivery] = []
        self._history_settled = False

    @property
    def placed(self) -> tuple[PlacedReminder, ...]:
        return tuple(self._placed)

    @property
    def new_placed(self) -> tuple[PlacedReminder, ...]:
        """The reminders this run took (not those of a paused run it resumes)."""
        return tuple(self._placed[len(self._placed) - len(self._deliveries) :])

    async def filter_model_input(self, data: CallModelData[Any]) -> ModelInputData:
        """The ``call_model_input_filter``: re-insert this run's reminders at their places, add a
        new one at the end if notifications are pending, then apply the caller's own filter."""
        runner_input = list(data.model_data.input)
        model_data = data.model_data
        if self._is_own_call(data.agent, runner_input):
            if not self._history_settled:
                # A reminder found in the history (a saved Session, an input list) whose delivery
                # was never settled, by a run that died, is delivered already.
                self._history_settled = True
                settle_from_texts(self._store, user_texts(runner_input), in_flight=self._in_flight)
            model_input = place_reminders(runner_input, self._placed)
            delivery = take_followup(self._store, self._renderer)
            if delivery is not None:
                label_delivery(delivery, user_texts(model_input))
                self._deliveries.append(delivery)
                self._placed.append(PlacedReminder(len(runner_input), delivery.text, delivery.task_ids))
                model_input.append(reminder_item(delivery.text))
            model_data = ModelInputData(input=model_input, instructions=model_data.instructions)
        if self._user_filter is None:
            return model_data
        filtered = self._user_filter(CallModelData(model_data=model_data, agent=data.agent, context=data.context))
        return await filtered if inspect.isawaitable(filtered) else filtered

    def _is_own_call(self, agent: Agent[Any], runner_input: list[TResponseInputItem]) -> bool:
        previous = self._history
        if self._agent is not None:
            continues = len(runner_input) > len(previous) and runner_input[: len(previous)] == previous
            if not continues or not (agent is self._agent or _hands_off_to(self._agent, agent)):
                return False
        self._agent = agent
        self._history = runner_input
        return True

    def confirm(self) -> None:
        """The run returned: its reminders are in the result's history."""
        for delivery in self._deliveries:
            delivery.confirm()

    def give_back(self) -> None:
        """The run raised or was cancelled: every notification it took goes back to the front of
        the queue, in the order they were first taken."""
        for delivery in reversed(self._deliveries):
            delivery.give_back()


def _hands_off_to(source: Agent[Any], target: Agent[Any]) -> bool:
    for handoff in source.handoffs:
        if handoff is target or (isinstance(handoff, Handoff) and handoff.agent_name == target.name):
            return True
    return False


class FollowupRunner:
    """Runs agents with background results delivered as ``<system-reminder>`` user messages.

    ``runner = FollowupRunner(store)``; then ``run = await runner.run(agent, history)`` in place
    of ``Runner.run``, and ``history = run.to_input_list()`` for the next run. Before each model
    call of the run, pending notifications are leased into one reminder, a user-role item at
    the end of the model input; later calls of the run see it again at the same place, and
    :meth:`FollowupRunResult.to_input_list` keeps it there. Each notification is in the kept
    history exactly once.

    Idle wake-up (``resume_when_idle=True``, the default): when a run ends while subagents of
    its conversation are live, :meth:`run` waits for the next result (at most ``idle_timeout``
    seconds per wait; None waits while subagents are live) and runs the agent that answered last
    again, on the history so far, where the first model call carries the reminder; at most
    ``max_idle_resumes`` times (16) per call of :meth:`run`. Not after a run paused for tool
    approval, nor for :meth:`run_streamed`.

    Call :meth:`run` and :meth:`run_streamed` on the asyncio event loop thread (the SDK is
    asyncio-only), :meth:`run_sync` from a thread running no loop. Several runs may share one
    runner and one store at once: each notification goes to the run that leases it first.
    """

    def __init__(
        self,
        store: Session,
        renderer: ReminderRenderer | None = None,
        *,
        resume_when_idle: bool = True,
        idle_timeout: float | None = None,
        max_idle_resumes: int = 16,
    ) -> None:
        if not isinstance(store, Session):
            raise TypeError(f"store must be a followups.BackgroundStore or Session, got {type(store).__name__}")
        check_idle_options(idle_timeout, max_idle_resumes)
        self.store = store
        self.renderer = renderer
        self.resume_when_idle = resume_when_idle
        self.idle_timeout = idle_timeout
        self.max_idle_resumes = max_idle_resumes

    def conversation(self, session: AgentsSession | None = None, conversation: str | None = None) -> Session:
        """The followups session of a run: ``conversation`` if given, else the SDK ``Session``'s
        ``session_id``, else ``store`` itself."""
        if conversation is not None:
            return self.store.session(conversation)
        if session is not None:
            return self.store.session(str(session.session_id))
        return self.store

    async def run(
        self,
        starting_agent: Agent[Any],
        input: str | list[TResponseInputItem] | RunState[Any, Any],
        *,
        run_config: RunConfig | None = None,
        conversation: str | None = None,
        **runner_options: Any,
    ) -> FollowupRunResult:
        """``Runner.run(starting_agent, input, run_config=..., **runner_options)`` with reminders.

        ``input`` is a string, a list of input items, or a ``RunState`` to resume after tool
        approval (take it with :meth:`FollowupRunResult.to_state`, so the paused run's reminders
        are put back in place). ``run_config`` is copied, never changed; its own
        ``call_model_input_filter``, if any, runs after the reminders are in place. Returns when
        the run does (after any idle wake-ups): its reminders are then confirmed delivered (with
        an SDK ``session=``, once appended to it). If the run raises (the model call failed, a
        guardrail tripped, the turn limit was hit) or is cancelled, the notifications it took are
        given back before the exception propagates, and the next run delivers them.

        Raises ``TypeError`` for another kind of input or a ``run_config`` that is not a
        ``RunConfig``, and ``ValueError`` for ``conversation_id``, ``previous_response_id`` and
        ``auto_previous_response_id``, which keep the history on the server.
        """
        self._check(input, run_config, runner_options)
        sdk_session: AgentsSession | None = runner_options.get("session")
        followups_session = self.conversation(sdk_session, conversation)
        run = await self._run_once(followups_session, starting_agent, input, run_config, runner_options)
        resumes = 0
        while self.resume_when_idle and resumes < self.max_idle_resumes and not run.result.interruptions:
            delivery_input = await self._next_input(followups_session, run, sdk_session)
            if delivery_input is None:
                break
            next_input, delivery = delivery_input
            resumes += 1
            try:
                run = await self._run_once(
                    followups_session,
                    run.result.last_agent,
                    next_input,
                    run_config,
                    runner_options,
                    () if delivery is None else (delivery.lease_id,),
                )
            except BaseException:
                if delivery is not None:
                    delivery.give_back()
                raise
            if delivery is not None:
                delivery.confirm()
        return dataclasses.replace(run, idle_resumes=resumes)

    def run_sync(
        self,
        pool: BlockingPool,
        starting_agent: Agent[Any],
        input: str | list[TResponseInputItem] | RunState[Any, Any],
        **options: Any,
    ) -> FollowupRunResult:
        """:meth:`run` for synchronous code: it runs on ``pool``'s event loop (a
        :class:`~followups.BlockingPool` with ``backend="asyncio"``, whose ``pool.pool`` the
        agent's tools use) and blocks the calling thread until it returns. Raises ``ValueError``
        for a trio pool, ``RuntimeError`` when called on the pool's own thread."""
        if not isinstance(pool, BlockingPool):
            raise TypeError(f"pool must be a followups.BlockingPool, got {type(pool).__name__}")
        if pool.backend != "asyncio":
            raise ValueError("the OpenAI Agents SDK runs on asyncio: use BlockingPool(store, backend='asyncio')")

        async def run() -> FollowupRunResult:
            return await self.run(starting_agent, input, **options)

        return pool.call(run)

    def run_streamed(
        self,
        starting_agent: Agent[Any],
        input: str | list[TResponseInputItem] | RunState[Any, Any],
        *,
        run_config: RunConfig | None = None,
        conversation: str | None = None,
        **runner_options: Any,
    ) -> FollowupStreamedRun:
        """``Runner.run_streamed`` with reminders: iterate :meth:`FollowupStreamedRun.stream_events`.

        Each model call of the streamed run gets its reminder as in :meth:`run`. They are
        confirmed once the stream has run to its end (the model calls consumed them and the
        result's history holds them), and given back if the run raises, is cancelled, or the
        stream is abandoned before its end (which cancels the run). No idle wake-up: the caller
        owns the stream. With an SDK ``session=``, the reminders are appended to it first.
        """
        self._check(input, run_config, runner_options)
        sdk_session: AgentsSession | None = runner_options.get("session")
        followups_session = self.conversation(sdk_session, conversation)
        reminders, config = self._reminders(followups_session, input, run_config)
        try:
            streamed = Runner.run_streamed(starting_agent, input, run_config=config, **runner_options)
        except BaseException:
            reminders.give_back()
            raise
        return FollowupStreamedRun(streamed, reminders, sdk_session)

    # -- internals ------------------------------------------------------------------------

    def _check(self, input: object, run_config: object, runner_options: dict[str, Any]) -> None:
        if not isinstance(input, str | list | RunState):
            raise TypeError(
                f"input must be a string, a list of input items or a RunState, got {type(input).__name__}"
            )
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise TypeError(f"run_config must be an agents.RunConfig or None, got {type(run_config).__name__}")
        elsewhere = sorted(name for name in _HISTORY_ELSEWHERE if runner_options.get(name))
        if elsewhere:
            raise ValueError(
                f"FollowupRunner does not support {', '.join(elsewhere)}: that history is kept on the server, "
                "where a reminder cannot be put at its place. Keep the history yourself with "
                "FollowupRunResult.to_input_list(), or use an SDK Session (session=...)."
            )

    def _reminders(
        self, session: Session, input: object, run_config: RunConfig | None, in_flight: Collection[str] = ()
    ) -> tuple[_RunReminders, RunConfig]:
        base_config = run_config or RunConfig()
        seeded = _reminders_of(input) if isinstance(input, RunState) else ()
        reminders = _RunReminders(session, self.renderer, base_config.call_model_input_filter, seeded, in_flight)
        config = dataclasses.replace(base_config, call_model_input_filter=reminders.filter_model_input)
        return reminders, config

    async def _run_once(
        self,
        session: Session,
        agent: Agent[Any],
        input: str | list[TResponseInputItem] | RunState[Any, Any],
        run_config: RunConfig | None,
        runner_options: dict[str, Any],
        in_flight: Collection[str] = (),
    ) -> FollowupRunResult:
        reminders, config = self._reminders(session, input, run_config, in_flight)
        try:
            result = await Runner.run(agent, input, run_config=config, **runner_options)
            sdk_session: AgentsSession | None = runner_options.get("session")
            if sdk_session is not None:
                await _save_reminders(sdk_session, reminders.new_placed)
        except BaseException:
            reminders.give_back()
            raise
        reminders.confirm()
        return FollowupRunResult(result, reminders.placed)

    async def _next_input(
        self, session: Session, run: FollowupRunResult, sdk_session: AgentsSession | None
    ) -> tuple[str | list[TResponseInputItem], ReminderDelivery | None] | None:
        """After a run ended: wait while subagents are live; the next run's input once a result
        is pending (with an SDK session, the reminder itself, leased here), or None."""
        if not await wait_for_result(session, self.idle_timeout):
            return None
        if sdk_session is None:
            return run.to_input_list(), None  # the first model call of the next run takes the reminder
        delivery = take_followup(session, self.renderer)
        if delivery is None:
            return None
        try:
            label_delivery(delivery, user_texts(await sdk_session.get_items()))
        except BaseException:
            delivery.give_back()
            raise
        return delivery.text, delivery


async def _save_reminders(session: AgentsSession, reminders: Sequence[PlacedReminder]) -> None:
    """Append the reminders a run delivered to the SDK ``Session`` (the runner saved the run's own
    items, never what the filter added), so later runs see them as history."""
    if reminders:
        await session.add_items([reminder_item(reminder.text) for reminder in reminders])


class FollowupStreamedRun:
    """A streamed run with reminders (:meth:`FollowupRunner.run_streamed`).

    ``result`` is the SDK's ``RunResultStreaming``. Iterate :meth:`stream_events` (once) for its
    events; the reminders are settled when that iteration ends. Used on the asyncio loop thread.
    """

    def __init__(
        self, result: RunResultStreaming, reminders: _RunReminders, sdk_session: AgentsSession | None
    ) -> None:
        self.result = result
        self._reminders = reminders
        self._sdk_session = sdk_session
        self._settled = False

    @property
    def reminders(self) -> tuple[PlacedReminder, ...]:
        return self._reminders.placed

    @property
    def final_output(self) -> Any:
        return self.result.final_output

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        """The run's stream events. When the stream ends, the run's reminders are confirmed; if
        the run raises, or the iteration is cancelled or closed early (the run is then
        cancelled), they are given back."""
        if self._settled:
            raise RuntimeError("stream_events can be iterated only once")
        completed = False
        try:
            async for event in self.result.stream_events():
                yield event
            if self._sdk_session is not None:
                await _save_reminders(self._sdk_session, self._reminders.new_placed)
            completed = True
        finally:
            self._settled = True
            if completed:
                self._reminders.confirm()
            else:
                if not self.result.is_complete:
                    self.result.cancel()
                self._reminders.give_back()

    def to_input_list(self) -> list[TResponseInputItem]:
        """The input list for the next run, with the reminders in place (after the stream ended)."""
        return place_reminders(self.result.to_input_list(), self._reminders.placed)


def as_function_tool(tool: Tool) -> FunctionTool:
    """``tool`` as an SDK ``FunctionTool``: same name, description and pydantic JSON schema.

    Arguments that are not a JSON object are answered with an error text for the model; the
    rest goes through :meth:`Tool.invoke`, so invalid arguments and a failing handler become
    error texts too, and cancellation propagates. The SDK awaits ``on_invoke_tool`` on the event
    loop thread, where the ``SubagentPool`` acts at once.
    """

    async def on_invoke_tool(context: ToolContext[Any], arguments_json: str) -> str:
        try:
            arguments = json.loads(arguments_json or "{}")
        except json.JSONDecodeError as exc:
            return f"Invalid arguments for {tool.name}: not valid JSON ({exc.msg})"
        if not isinstance(arguments, dict):
            return f"Invalid arguments for {tool.name}: expected a JSON object, got {type(arguments).__name__}"
        return (await tool.invoke(arguments)).content

    return FunctionTool(
        name=tool.name,
        description=tool.description,
        params_json_schema=tool.parameters.model_json_schema(),
        on_invoke_tool=on_invoke_tool,
    )


def followup_function_tools(
    pool: SubagentPool, run_subagent: Callable[[TaskRequest], Awaitable[Any]]
) -> list[FunctionTool]:
    """The ``task``, ``task_status`` and ``cancel_task`` tools of :func:`followups.task_tools` as
    SDK function tools, for ``Agent(tools=...)``. ``pool`` must have been entered on the event
    loop that runs the agent."""
    return [as_function_tool(tool) for tool in task_tools(pool, run_subagent)]
