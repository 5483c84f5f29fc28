"""The ``followups demo`` session: a scripted main agent fans out subagents through the task
tools, with a concurrency cap, and the reminders it receives are printed as it sees them."""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from .hooks import FollowupPlugin, UserMessage
from .loop import AgentLoop, AssistantMessage, Message, ScriptedModel, ToolResultMessage, tool_call
from .pool import SubagentPool
from .settings import FollowupSettings
from .state import LifecycleEvent, TaskFinished, TaskStarted
from .store import BackgroundStore
from .tools import TaskRequest, task_tools

__all__ = ["DemoOptions", "DemoReport", "run_demo"]

# What each demo subagent does, by role: seconds it takes, and how it ends.
QUICK_SECONDS = 0.2
FAILING_SECONDS = 0.4
HUGE_SECONDS = 0.6
HUGE_OUTPUT_LINES = 35_000  # about 1 MB
ROLES = ("summarise the README", "dump the full test log", "run the flaky migration", "crawl the docs site")


@dataclass(frozen=True)
class DemoOptions:
    max_concurrent: int = 4
    subagents: int = 6
    backend: str = "trio"
    template_dir: Path | None = None
    relay_dir: Path | None = None


@dataclass
class DemoReport:
    """What the session did, for the caller (and the tests) to check."""

    model_calls: int = 0
    reminders: list[str] = field(default_factory=list)
    refusals: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    relay_dir: Path | None = None


def run_demo(options: DemoOptions, out: TextIO) -> DemoReport:
    """Run the demo session on ``options.backend`` and print its transcript to ``out``."""
    return anyio.run(_session, options, out, backend=options.backend)


def _descriptions(count: int) -> list[str]:
    return [ROLES[i] if i < len(ROLES) else f"check module {i - len(ROLES) + 1}" for i in range(count)]


async def _subagent(request: TaskRequest) -> str:
    """The demo's subagents: what each does depends on its description."""
    if request.description == ROLES[1]:
        await anyio.sleep(HUGE_SECONDS)
        return "".join(f"test_{i:05d} ... PASSED ({i % 97} ms)\n" for i in range(HUGE_OUTPUT_LINES))
    if request.description == ROLES[2]:
        await anyio.sleep(FAILING_SECONDS)
        frames = "".join(f'  File "migrations/step_{i:04d}.py", line {i}, in apply\n' for i in range(400))
        raise RuntimeError(f"migration aborted after 400 steps\nTraceback (most recent call last):\n{frames}")
    if request.description == ROLES[3]:
        await anyio.sleep(math.inf)  # crawls until cancelled
    await anyio.sleep(QUICK_SECONDS)
    return f"Done: {request.description}. Everything looks fine."


class DemoScript:
    """The main agent's side of the session, played by a :class:`ScriptedModel`.

    It fans out ``cap + 1`` subagents at once (so one is refused at the cap), ends its turn,
    and then reacts to each reminder: it cancels the crawler once the first result is in,
    retries refused work and starts the rest as slots free, and answers when all is done.
    """

    def __init__(self, descriptions: list[str], max_concurrent: int) -> None:
        self.cap = max_concurrent
        self.to_start = list(descriptions)
        self.in_flight: dict[str, str] = {}  # task id -> description
        self.outcomes: dict[str, str] = {}  # description -> final status
        self.cancel_requested = False

    def __call__(self, messages: Sequence[Message]) -> AssistantMessage:
        self._learn(messages)
        last = messages[-1]
        if isinstance(last, UserMessage) and len(messages) == 1:
            first = self.to_start[: self.cap + 1]
            return self._start(first, f"Fanning out {len(first)} subagents in the background.")
        if isinstance(last, UserMessage) and "<system-reminder>" in last.content:
            return self._react()
        if self.in_flight or self.to_start:
            return AssistantMessage(content="Waiting for the background tasks; I will continue when they report.")
        return self._summary()

    def _learn(self, messages: Sequence[Message]) -> None:
        """Read the newest tool results and reminders to update what is in flight."""
        for message in reversed(messages):
            if isinstance(message, AssistantMessage):
                break
            if isinstance(message, ToolResultMessage) and message.name == "task":
                started = re.match(r"Started background task (\S+) \((.*?)\)\.", message.content)
                if started and started.group(1) not in self.in_flight:
                    self.in_flight[started.group(1)] = started.group(2)
                    self.to_start.remove(started.group(2))
        last = messages[-1]
        if isinstance(last, UserMessage):
            for id, status in re.findall(r"^\[task (\S+)\] (completed|failed|cancelled):", last.content, re.M):
                description = self.in_flight.pop(id, None)
                if description is not None:
                    self.outcomes[description] = status

    def _react(self) -> AssistantMessage:
        calls = []
        crawler = next((id for id, d in self.in_flight.items() if d == ROLES[3]), None)
        if crawler and self.outcomes and not self.cancel_requested:
            self.cancel_requested = True
            calls.append(tool_call("cancel_task", task_id=crawler))
        free = self.cap - len(self.in_flight)
        starting = self.to_start[:free] if free > 0 else []
        calls += [tool_call("task", description=d, prompt=f"Please {d}.") for d in starting]
        if not calls:
            if self.in_flight or self.to_start:
                return AssistantMessage(content="Noted. Waiting for the remaining background tasks.")
            return self._summary()
        return AssistantMessage(content="Noted the results; adjusting the background work.", tool_calls=calls)

    def _start(self, descriptions: list[str], text: str) -> AssistantMessage:
        calls = [tool_call("task", description=d, prompt=f"Please {d}.") for d in descriptions]
        return AssistantMessage(content=text, tool_calls=calls)

    def _summary(self) -> AssistantMessage:
        counts = {s: sum(1 for v in self.outcomes.values() if v == s) for s in ("completed", "failed", "cancelled")}
        return AssistantMessage(
            content=f"All {len(self.outcomes)} background tasks are accounted for: {counts['completed']} completed, "
            f"{counts['failed']} failed, {counts['cancelled']} cancelled."
        )


class _Transcript:
    """Prints what the model sees at each call, and the live status line."""

    def __init__(self, out: TextIO, report: DemoReport) -> None:
        self.out = out
        self.report = report
        self.shown = 0
        self.status: dict[str, str] = {}

    def model_input(self, messages: Sequence[Message]) -> None:
        self.report.model_calls += 1
        self.out.write(f"\n══ model call {self.report.model_calls}: new input ══\n")
        for message in messages[self.shown :]:
            self.out.write(_describe(message) + "\n")
            if isinstance(message, UserMessage) and message.content.startswith("<system-reminder>"):
                self.report.reminders.append(message.content)
            if isinstance(message, ToolResultMessage) and message.is_error and message.name == "task":
                self.report.refusals += 1
        self.shown = len(messages) + 1  # the reply is printed by model_output

    def model_output(self, reply: AssistantMessage) -> None:
        self.out.write(_describe(reply) + "\n")

    def lifecycle(self, event: LifecycleEvent) -> None:
        if isinstance(event, TaskStarted):
            self.status[event.id] = "running"
        elif isinstance(event, TaskFinished):
            self.status[event.id] = event.notification.state.status.value
        running = sorted(id for id, s in self.status.items() if s == "running")
        finished = {s: sum(1 for v in self.status.values() if v == s) for s in ("completed", "failed", "cancelled")}
        self.out.write(
            f"   ▸ status: running [{', '.join(running)}] · completed {finished['completed']}"
            f" · failed {finished['failed']} · cancelled {finished['cancelled']}\n"
        )


def _describe(message: Message) -> str:
    if isinstance(message, UserMessage):
        return f"[user]\n{_indent(message.content)}"
    if isinstance(message, ToolResultMessage):
        flag = " (error)" if message.is_error else ""
        return f"[tool result: {message.name}{flag}]\n{_indent(message.content)}"
    calls = "".join(f"\n    → {call.name}({call.arguments})" for call in message.tool_calls)
    return f"[assistant] {message.content}{calls}"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


class _ShowingModel:
    """Wraps the scripted model to print each call's new input and the reply."""

    def __init__(self, model: ScriptedModel, transcript: _Transcript) -> None:
        self.model = model
        self.transcript = transcript

    async def respond(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> AssistantMessage:
        self.transcript.model_input(messages)
        reply = await self.model.respond(messages, tools)
        self.transcript.model_output(reply)
        return reply


async def _session(options: DemoOptions, out: TextIO) -> DemoReport:
    report = DemoReport()
    relay_dir = options.relay_dir or Path(tempfile.mkdtemp(prefix="followups-demo-"))
    report.relay_dir = relay_dir
    settings = FollowupSettings(
        max_concurrent=options.max_concurrent,
        capacity=max(32, options.subagents + options.max_concurrent),
        relay_dir=relay_dir,
        template_dir=options.template_dir,
    )
    transcript = _Transcript(out, report)
    store = BackgroundStore(settings, ui_sink=transcript.lifecycle)
    script = DemoScript(_descriptions(options.subagents), options.max_concurrent)

    async def run_subagent(request: TaskRequest) -> str:
        return await _subagent(request)

    out.write(
        f"followups demo: {options.subagents} subagents, at most {options.max_concurrent} at once, "
        f"on {options.backend}; relayed outputs go to {relay_dir}\n"
    )
    numbers = itertools.count(1)
    async with SubagentPool(
        store, max_concurrent=options.max_concurrent, id_factory=lambda: f"sub{next(numbers)}"
    ) as pool:
        tools = task_tools(pool, run_subagent)
        model = _ShowingModel(ScriptedModel(itertools.repeat(script)), transcript)
        loop = AgentLoop(model, tools, idle_resume=pool)
        FollowupPlugin(store).register(loop)
        final = await loop.run("Audit this repository: use background subagents for the slow parts.")
    report.outcomes = dict(script.outcomes)
    out.write(f"\n══ session over ══\n{final.content}\n")
    return report

