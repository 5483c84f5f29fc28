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
again keeps the history the caller keeps complete and free of repeats.

Sessions and server-managed conversations (``session=``, ``conversation_id=``,
``previous_response_id=``, ``auto_previous_response_id=``) keep the history outside the caller's
hands, where this adapter cannot put a reminder at its place; :meth:`FollowupRunner.run`
refuses them rather than let a reminder be seen once and then forgotten. The SDK runs on asyncio
only.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner, RunResult, TResponseInputItem
from agents.run_config import CallModelData, ModelInputData
from agents.tool_context import ToolContext

from ..delivery import ReminderDelivery, take_followup
from ..pool import SubagentPool
from ..reminders import ReminderRenderer
from ..store import BackgroundStore
from ..tools import TaskRequest, Tool, task_tools

__all__ = [
    "FollowupRunResult",
    "FollowupRunner",
    "PlacedReminder",
    "as_function_tool",
    "followup_function_tools",
    "place_reminders",
    "reminder_item",
]

ModelInputFilter = Callable[[CallModelData[Any]], ModelInputData | Awaitable[ModelInputData]]

_HISTORY_ELSEWHERE = ("session", "conversation_id", "previous_response_id", "auto_previous_response_id")


def reminder_item(text: str) -> TResponseInputItem:
    """The user-role input item that carries a reminder: the shape the SDK itself gives a
    string input (``{"role": "user", "content": text}``)."""
    return {"role": "user", "content": text}


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

    @property
    def final_output(self) -> Any:
        return self.result.final_output

    def to_input_list(self) -> list[TResponseInputItem]:
        """The input list for the next run: the run's history with its reminders in place."""
        return place_reminders(self.result.to_input_list(), self.reminders)


class _RunReminders:
    """The reminder bookkeeping of one run: the model input filter and the run's deliveries.

    Used on the event loop thread running the run. Only the run's own model calls get
    reminders: the first call, and later calls whose input continues the previous one (same
    agent or a handoff target of it, previous input as a strict prefix). A nested run, such as
    an agent used as a tool (which inherits the parent's ``RunConfig``), does not qualify, so it
    never takes the parent's notifications.
    """

    def __init__(
        self, store: BackgroundStore, renderer: ReminderRenderer | None, user_filter: ModelInputFilter | None
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._user_filter = user_filter
        self._agent: Agent[Any] | None = None
        self._history: list[TResponseInputItem] = []
        self._placed: list[PlacedReminder] = []
        self._deliveries: list[ReminderDelivery] = []

    @property
    def placed(self) -> tuple[PlacedReminder, ...]:
        return tuple(self._placed)

    async def filter_model_input(self, data: CallModelData[Any]) -> ModelInputData:
        """The ``call_model_input_filter``: re-insert this run's reminders at their places, add a
        new one at the end if notifications are pending, then apply the caller's own filter."""
        runner_input = list(data.model_data.input)
        model_data = data.model_data
        if self._is_own_call(data.agent, runner_input):
            model_input = place_reminders(runner_input, self._placed)
            delivery = take_followup(self._store, self._renderer)
            if delivery is not None:
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
    call of the run, pending notifications are drained into one reminder, a user-role item at
    the end of the model input; later calls of the run see it again at the same place, and
    :meth:`FollowupRunResult.to_input_list` keeps it there. Each notification is in the kept
    history exactly once.

    Call :meth:`run` on the asyncio event loop thread (the SDK is asyncio-only). Several runs
    may share one runner and one store at once: each notification goes to the run that drains
    it first.
    """

    def __init__(self, store: BackgroundStore, renderer: ReminderRenderer | None = None) -> None:
        self.store = store
        self.renderer = renderer

    async def run(
        self,
        starting_agent: Agent[Any],
        input: str | list[TResponseInputItem],
        *,
        run_config: RunConfig | None = None,
        **runner_options: Any,
    ) -> FollowupRunResult:
        """``Runner.run(starting_agent, input, run_config=..., **runner_options)`` with reminders.

        ``run_config`` is copied, never changed; its own ``call_model_input_filter``, if any,
        runs after the reminders are in place (so it sees them, as it will in later runs, where
        they are ordinary history items). Returns when the run does: its reminders are then
        confirmed delivered. If the run raises (the model call failed, a guardrail tripped, the
        turn limit was hit) or is cancelled, the notifications it took are given back to the
        store before the exception propagates, and the next run delivers them.

        Raises ``TypeError`` for an input that is not a string or a list of input items (such
        as a ``RunState``) or a ``run_config`` that is not a ``RunConfig``, and ``ValueError``
        for the options that keep the history elsewhere (``session``, ``conversation_id``,
        ``previous_response_id``, ``auto_previous_response_id``).
        """
        if not isinstance(input, str | list):
            raise TypeError(
                f"input must be a string or a list of input items, got {type(input).__name__}; "
                "resuming a RunState would lose the reminders, which the state does not record"
            )
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise TypeError(f"run_config must be an agents.RunConfig or None, got {type(run_config).__name__}")
        elsewhere = sorted(name for name in _HISTORY_ELSEWHERE if runner_options.get(name))
        if elsewhere:
            raise ValueError(
                f"FollowupRunner.run does not support {', '.join(elsewhere)}: that history is kept outside "
                "the caller's hands, where a reminder cannot be put at its place. Keep the history yourself "
                "with FollowupRunResult.to_input_list()."
            )
        base_config = run_config or RunConfig()
        reminders = _RunReminders(self.store, self.renderer, base_config.call_model_input_filter)
        config = dataclasses.replace(base_config, call_model_input_filter=reminders.filter_model_input)
        try:
            result = await Runner.run(starting_agent, input, run_config=config, **runner_options)
        except BaseException:
            reminders.give_back()
            raise
        reminders.confirm()
        return FollowupRunResult(result, reminders.placed)


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
