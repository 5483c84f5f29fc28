"""The ``followups demo`` session: a scripted main agent fans out subagents and a background shell
through the tools, under a concurrency cap, steers one of them with a message, cancels another
with its child, and prints what the model receives at each call, with a live status line."""

from __future__ import annotations

import itertools
import re
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from .context import TaskContext
from .demo_workers import WorkerFleet
from .hooks import FollowupPlugin, UserMessage
from .loop import AgentLoop, AssistantMessage, Message, ScriptedModel, ToolResultMessage, tool_call
from .pool import SubagentPool
from .settings import FollowupSettings
from .shell import shell_tool
from .state import (
    DEFAULT_SESSION,
    LifecycleEvent,
    TaskCancelRequested,
    TaskFinished,
    TaskProgress,
    TaskRegistered,
    TaskStarted,
)
from .store import BackgroundStore
from .tools import TaskRequest, task_tools

__all__ = ["DemoOptions", "DemoReport", "run_demo"]

QUICK_SECONDS = 0.2
FAILING_SECONDS = 0.4
HUGE_SECONDS = 0.6
HUGE_OUTPUT_LINES = 35_000  # about 1 MB
PROGRESS_SECONDS = 0.15
STEERING_WAIT_SECONDS = 5.0
README, TEST_LOG, MIGRATION, CRAWL = (
    "summarise the README",
    "dump the full test log",
    "run the flaky migration",
    "crawl the docs site",
)
ROLES = (README, TEST_LOG, MIGRATION, CRAWL)
NAMES = {README: "readme", CRAWL: "crawler"}
SHELL_DESCRIPTION = "run the test suite"
SHELL_COMMAND = 'for i in $(seq 1 30000); do echo "test_$i ... PASSED"; done; echo "30000 passed"'
STEERING = "Focus on the installation steps."


@dataclass(frozen=True)
class DemoOptions:
    max_concurrent: int = 4
    subagents: int = 6
    backend: str = "trio"
    template_dir: Path | None = None
    relay_dir: Path | None = None
    store_url: str | None = None  # None: a store in memory
    session: str | None = None  # None: the store's default session
    workers: int = 0  # > 0: subagents run in this many worker processes (a redis:// store)


@dataclass
class DemoReport:
    """What the session did, for the caller (and the tests) to check."""

    model_calls: int = 0
    reminders: list[str] = field(default_factory=list)
    refusals: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    relay_dir: Path | None = None
    progress_lines: int = 0
    cancel_requests: dict[str, str] = field(default_factory=dict)  # task id -> who asked
    worker_pids: list[int] = field(default_factory=list)  # with workers: their processes
    session: str = DEFAULT_SESSION


def run_demo(options: DemoOptions, out: TextIO) -> DemoReport:
    """Run the demo session on ``options.backend`` and print its transcript to ``out``."""
    return anyio.run(_session, options, out, backend=options.backend)


def _descriptions(count: int) -> list[str]:
    return [ROLES[i] if i < len(ROLES) else f"check module {i - len(ROLES) + 1}" for i in range(count)]


class DemoSubagents:
    """The demo's subagents: what each does depends on its description."""

    def __init__(self, *, worker: str | None = None) -> None:
        self.pool: SubagentPool | None = None
        self.worker = worker  # with workers: which process ran it, named in each result

    async def __call__(self, request: TaskRequest, ctx: TaskContext) -> str:
        if self.worker is None:
            return await self._run(request, ctx)
        try:
            result = await self._run(request, ctx)
        except RuntimeError as exc:
            raise RuntimeError(f"(ran in {self.worker}) {exc}") from exc
        return f"(ran in {self.worker}) {result}"

    async def _run(self, request: TaskRequest, ctx: TaskContext) -> str:
        if request.description == README:
            ctx.report_progress("reading README.md")
            with anyio.move_on_after(STEERING_WAIT_SECONDS):
                focus = await ctx.inbox.receive()
                ctx.report_progress(f"steered: {focus}")
                return f"README summary, as asked ({focus}): pip install, then `followups demo`."
            return "README summary: install with pip, then run `followups demo`."
        if request.description == TEST_LOG:
            await anyio.sleep(HUGE_SECONDS)
            return "".join(f"test_{i:05d} ... PASSED ({i % 97} ms)\n" for i in range(HUGE_OUTPUT_LINES))
        if request.description == MIGRATION:
            await anyio.sleep(FAILING_SECONDS)
            frames = "".join(f'  File "migrations/step_{i:04d}.py", line {i}, in apply\n' for i in range(400))
            raise RuntimeError(f"migration aborted after 400 steps\nTraceback (most recent call last):\n{frames}")
        if request.description == CRAWL:
            assert self.pool is not None
            self.pool.spawn(self._watch_queue, name="crawl-queue", kind="monitor", description="watch the crawl queue", use_slot=False)
            for page in itertools.count(1):
                ctx.report_progress(f"crawled {page} pages")
                await anyio.sleep(PROGRESS_SECONDS)
        await anyio.sleep(QUICK_SECONDS)
        return f"Done: {request.description}. Everything looks fine."

    async def _watch_queue(self, ctx: TaskContext) -> str:
        for depth in itertools.count(40, -3):
            ctx.report_progress(f"{max(depth, 0)} pages queued")
            await anyio.sleep(PROGRESS_SECONDS * 2)
        return "unreachable"


class DemoScript:
    """The main agent's side of the session, played by a :class:`ScriptedModel`.

    It fans out ``cap + 1`` subagents at once (so one is refused at the cap) and a background
    shell, then reacts to each reminder: it steers the README summary with a message, cancels
    the crawler and its child with ``cancel_task(tree=true)`` once the first result is in,
    starts the rest as slots free, and answers when everything has reported.
    """

    def __init__(self, descriptions: list[str], max_concurrent: int) -> None:
        self.cap = max_concurrent
        self.to_start = list(descriptions)
        self.in_flight: dict[str, str] = {}  # task id -> description (subagents only)
        self.shell_id: str | None = None
        self.outcomes: dict[str, str] = {}  # description -> final status
        self.steered = False
        self.cancel_requested = False

    def __call__(self, messages: Sequence[Message]) -> AssistantMessage:
        self._learn(messages)
        last = messages[-1]
        if isinstance(last, UserMessage) and len(messages) == 1:
            first = self.to_start[: self.cap + 1]
            calls = [self._task_call(d) for d in first]
            calls.append(tool_call("run_shell", command=SHELL_COMMAND, description=SHELL_DESCRIPTION))
            return AssistantMessage(
                content=f"Fanning out {len(first)} subagents and the test suite in the background.", tool_calls=calls
            )
        if isinstance(last, UserMessage) and "<system-reminder>" in last.content:
            return self._react()
        if self.in_flight or self.to_start or self.shell_id:
            return AssistantMessage(content="Waiting for the background tasks; I will continue when they report.")
        return self._summary()

    def _task_call(self, description: str) -> Any:
        name = NAMES.get(description)
        arguments: dict[str, str] = {"description": description, "prompt": f"Please {description}."}
        if name:
            arguments["name"] = name
        return tool_call("task", **arguments)

    def _learn(self, messages: Sequence[Message]) -> None:
        """Read the newest tool results and reminders to update what is in flight."""
        for message in reversed(messages):
            if isinstance(message, AssistantMessage):
                break
            if isinstance(message, ToolResultMessage) and message.name == "task":
                started = re.match(r"Started background task (\S+) \((.*?)\)", message.content)
                if started and started.group(1) not in self.in_flight:
                    self.in_flight[started.group(1)] = started.group(2)
                    self.to_start.remove(started.group(2))
            if isinstance(message, ToolResultMessage) and message.name == "run_shell":
                started = re.match(r"Started background shell task (\S+) ", message.content)
                if started:
                    self.shell_id = started.group(1)
        last = messages[-1]
        if isinstance(last, UserMessage):
            for id, status in re.findall(r"^\[task (\S+)\] (completed|failed|cancelled):", last.content, re.M):
                description = self.in_flight.pop(id, None)
                if description is not None:
                    self.outcomes[description] = status
                elif id == self.shell_id:
                    self.outcomes[SHELL_DESCRIPTION] = status
                    self.shell_id = None

    def _react(self) -> AssistantMessage:
        calls = []
        live = set(self.in_flight.values())
        if README in live and not self.steered:
            self.steered = True
            calls.append(tool_call("send_message", task_id=NAMES[README], message=STEERING))
        if CRAWL in live and self.outcomes and not self.cancel_requested:
            self.cancel_requested = True
            calls.append(tool_call("cancel_task", task_id=NAMES[CRAWL], tree=True))
        free = self.cap - len(self.in_flight)
        starting = self.to_start[:free] if free > 0 else []
        calls += [self._task_call(d) for d in starting]
        if not calls:
            if self.in_flight or self.to_start or self.shell_id:
                return AssistantMessage(content="Noted. Waiting for the remaining background tasks.")
            return self._summary()
        return AssistantMessage(content="Noted the results; adjusting the background work.", tool_calls=calls)

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
        self.status: dict[str, str] = {}  # task label -> status
        self.labels: dict[str, str] = {}  # task id -> label (name, or id)
        self.last_status = ""

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
        if isinstance(event, TaskRegistered):
            self.labels[event.id] = event.task.name or event.id
            self.status[self.labels[event.id]] = event.task.state.status.value
            return
        label = self.labels.get(event.id, event.id)
        if isinstance(event, TaskStarted):
            self.status[label] = "running"
        elif isinstance(event, TaskFinished):
            self.status[label] = event.notification.state.status.value
        elif isinstance(event, TaskProgress):
            self.report.progress_lines += 1
            self.out.write(f"   ▸ progress {label}: {event.message}\n")
            return
        elif isinstance(event, TaskCancelRequested):
            self.report.cancel_requests[event.id] = event.by
            self.out.write(f"   ▸ cancel requested for {label} (by {event.by})\n")
            return
        else:
            return
        running = sorted(label for label, status in self.status.items() if status == "running")
        finished = {s: sum(1 for v in self.status.values() if v == s) for s in ("completed", "failed", "cancelled")}
        line = (
            f"   ▸ status: running [{', '.join(running)}] · completed {finished['completed']}"
            f" · failed {finished['failed']} · cancelled {finished['cancelled']}\n"
        )
        if line != self.last_status:
            self.out.write(line)
            self.last_status = line


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
    if options.workers and not (options.store_url or "").startswith(("redis://", "rediss://")):
        raise ValueError(f"--workers needs a redis:// store (--store redis://host:port/db), got {options.store_url!r}")
    relay_dir = options.relay_dir or Path(tempfile.mkdtemp(prefix="followups-demo-"))
    report.relay_dir = relay_dir
    settings = FollowupSettings(
        max_concurrent=options.max_concurrent,
        capacity=max(32, options.subagents + options.max_concurrent + 2),
        relay_dir=relay_dir,
        template_dir=options.template_dir,
    )
    transcript = _Transcript(out, report)
    store = BackgroundStore.open(options.store_url, settings) if options.store_url else BackgroundStore(settings)
    script = DemoScript(_descriptions(options.subagents), options.max_concurrent)
    subagents = DemoSubagents()
    numbers = itertools.count(1)
    ids = (f"sub{n}" for n in numbers)
    fleet: WorkerFleet | None = None
    session = store.session(options.session) if options.session else store
    where = ""
    if options.workers:
        if not options.session:
            session = store.session(f"demo-{uuid.uuid4().hex[:8]}")
        report.session = session.id
        prefix = str(getattr(store.backend, "prefix", "followups"))
        fleet = WorkerFleet(
            options.store_url or "", session.id, options.workers,
            prefix=prefix, max_concurrent=options.max_concurrent, relay_dir=relay_dir,
        )  # fmt: skip
        try:
            fleet.start()
        except BaseException:
            store.close()
            raise
        report.worker_pids = list(fleet.pids)
        where = f" in {options.workers} worker processes (pids {', '.join(map(str, fleet.pids))}) of session {session.id}"
    out.write(
        f"followups demo: {options.subagents} subagents, at most {options.max_concurrent} at once{where}, and a "
        f"background shell, on {options.backend}; relayed outputs go to {relay_dir}\n"
    )
    try:
        with store:
            async with anyio.create_task_group() as status_line:
                events = session.subscribe()
                status_line.start_soon(_show_events, events, transcript)
                async with SubagentPool(
                    session, max_concurrent=options.max_concurrent, id_factory=lambda: next(ids)
                ) as pool:
                    subagents.pool = pool
                    tools = [*task_tools(pool, subagents), shell_tool(pool)]
                    if fleet is not None:
                        tools[0] = fleet.task_tool(ids)
                    model = _ShowingModel(ScriptedModel(itertools.repeat(script)), transcript)
                    loop = AgentLoop(model, tools, idle_resume=pool, max_model_calls=100)
                    FollowupPlugin(session).register(loop)
                    final = await loop.run("Audit this repository: use background subagents for the slow parts.")
                await anyio.sleep(0)  # let the status line show the last events
                events.close()
    finally:
        if fleet is not None:
            fleet.stop()
    report.outcomes = dict(script.outcomes)
    out.write(f"\n══ session over ══\n{final.content}\n")
    if options.store_url and not options.store_url.lower().startswith("memory:"):
        listing = f"followups tasks --store {options.store_url}" + (f" --session {session.id}" if session is not store else "")
        out.write(f"Its tasks are kept in {options.store_url}; list them with: {listing}\n")
    return report


async def _show_events(events: Any, transcript: _Transcript) -> None:
    async for event in events:
        if not isinstance(event, (TaskRegistered, TaskStarted, TaskProgress, TaskCancelRequested, TaskFinished)):
            continue
        transcript.lifecycle(event)

