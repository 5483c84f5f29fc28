"""``followups demo --store redis://… --workers N``: the demo's session spread over processes.

The main process runs the scripted model loop, the session's reminders and its background
shell. Its ``task`` tool does not run subagents itself: it routes each spawn to one of ``N``
worker processes through a Redis list (``{P}:demo:SESSION:jobs``, ``RPUSH`` / ``BLPOP``). The
worker that takes a job spawns the subagent in its own :class:`~followups.SubagentPool` on the
same session of the same Redis store, so the run is created by the worker's epoch, under the
session's cap (held across workers by the ledger's ``create`` script), and finished there.
The worker answers on a per-job reply list whether the spawn was admitted, so the tool
returns the same "Started background task …" or refusal as a local spawn.

Everything else goes through the ledger as for any multi-worker deployment: the main
process's ``send_message`` and ``cancel_task`` reach the subagents in the worker that runs
them, and each result a worker finishes is delivered once, in a reminder of the main
process. Each result names the pid of the worker process that produced it.

Run a worker by hand with ``python -m followups.demo_workers --store URL --session S``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .errors import CapacityExceeded, NameInUse, StoreUnavailable
from .settings import FollowupSettings
from .tools import TaskArgs, TaskRequest, Tool, ToolOutcome

__all__ = ["WorkerFleet", "jobs_key", "worker_main"]

READY_TIMEOUT_SECONDS = 30.0
REPLY_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0


def jobs_key(prefix: str, session: str) -> str:
    """The Redis list a session's spawns are routed through."""
    return f"{{{prefix}}}:demo:{session}:jobs"


def _client(url: str) -> Any:
    import redis

    from .ledger.redis import parse_redis_url

    client_url, _ = parse_redis_url(url)
    return redis.Redis.from_url(client_url, socket_connect_timeout=5)


class WorkerFleet:
    """The main process's side: starts ``count`` worker processes on ``url``'s Redis for
    ``session``, routes spawns to them (:meth:`task_tool`) and stops them (:meth:`stop`).

    Not thread-safe: use it from the thread that runs the demo's loop. :meth:`start` blocks
    until every worker has opened its store (or raises ``RuntimeError`` naming the one that
    did not), :meth:`stop` until they have exited."""

    def __init__(
        self, url: str, session: str, count: int, *, prefix: str, max_concurrent: int, relay_dir: Path
    ) -> None:
        if count < 1:
            raise ValueError(f"the demo needs at least 1 worker, got {count}")
        self.url = url
        self.session = session
        self.count = count
        self.max_concurrent = max_concurrent
        self.relay_dir = relay_dir
        self.jobs = jobs_key(prefix, session)
        self.client = _client(url)
        self.processes: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def start(self) -> None:
        command = [
            sys.executable, "-m", "followups.demo_workers",
            "--store", self.url,
            "--session", self.session,
            "--max-concurrent", str(self.max_concurrent),
            "--relay-dir", str(self.relay_dir),
        ]  # fmt: skip
        for _ in range(self.count):
            self.processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        for process in self.processes:
            line = self._ready_line(process)
            if not line.startswith("ready "):
                self.kill()
                raise RuntimeError(f"demo worker {process.pid} did not start (it said {line!r})")
            self.pids.append(int(line.split()[1]))

    def _ready_line(self, process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    return process.stdout.readline().strip()
                if process.poll() is not None:
                    return f"exit status {process.returncode}"
        return f"nothing within {READY_TIMEOUT_SECONDS:g} s"

    def route(self, request: TaskRequest, task_id: str) -> str | None:
        """Hand a spawn to a worker and wait for its answer: None when the worker started it,
        else the refusal to show the model. Raises ``RuntimeError`` when no worker answers."""
        reply_key = f"{self.jobs}:reply:{task_id}:{uuid.uuid4().hex[:8]}"
        job = {
            "task_id": task_id,
            "description": request.description,
            "prompt": request.prompt,
            "name": request.name,
            "reply": reply_key,
        }
        self.client.rpush(self.jobs, json.dumps(job))
        answer = self.client.blpop([reply_key], timeout=REPLY_TIMEOUT_SECONDS)
        if answer is None:
            raise RuntimeError(f"no demo worker took task {task_id} within {REPLY_TIMEOUT_SECONDS:g} s")
        reply = json.loads(answer[1])
        return None if reply.get("error") is None else str(reply["error"])

    def task_tool(self, ids: Any) -> Tool:
        """The ``task`` tool, routed: each call hands its subagent to a worker. Synchronous, like
        the local one, so parallel calls are admitted in the model's order."""

        def task(args: TaskArgs) -> ToolOutcome:
            task_id = next(ids)
            refusal = self.route(TaskRequest(args.description, args.prompt, args.name), task_id)
            if refusal is not None:
                return ToolOutcome(refusal, is_error=True)
            named = f", named {args.name!r}" if args.name else ""
            return ToolOutcome(
                f"Started background task {task_id} ({args.description}){named} on a worker process. It runs "
                f"on its own: its result will arrive automatically in a <system-reminder> message when it "
                f"finishes. Do not poll task_status or wait for it; continue with other work, or end your "
                f"turn if there is none."
            )

        return Tool(
            "task",
            "Start a subagent in the background on a self-contained task. Returns its task id at "
            "once; the result arrives later, by itself, in a <system-reminder>.",
            TaskArgs,
            task,
        )

    def stop(self) -> None:
        """Tell every worker to stop (each cancels what it still runs) and wait for them."""
        for _ in self.processes:
            self.client.rpush(self.jobs, json.dumps({"stop": True}))
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        self.client.delete(self.jobs)
        self.client.close()

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        self.client.close()


async def _serve(url: str, session_id: str, max_concurrent: int, relay_dir: Path) -> None:
    from .demo import DemoSubagents
    from .pool import SubagentPool
    from .store import BackgroundStore

    settings = FollowupSettings(max_concurrent=max_concurrent, capacity=64, relay_dir=relay_dir)
    store = BackgroundStore.open(url, settings)
    client = _client(url)
    prefix = str(getattr(store.backend, "prefix", "followups"))
    jobs = jobs_key(prefix, session_id)
    pid = os.getpid()
    parent = os.getppid()
    subagents = DemoSubagents(worker=f"worker pid {pid}")
    with store:
        async with SubagentPool(store.session(session_id), max_concurrent=max_concurrent) as pool:
            subagents.pool = pool
            print(f"ready {pid}", flush=True)
            while True:
                found = await anyio.to_thread.run_sync(client.blpop, [jobs], 1)
                if found is None:
                    if os.getppid() != parent:
                        break  # the demo that started this worker is gone
                    continue
                job = json.loads(found[1])
                if job.get("stop"):
                    break
                request = TaskRequest(job["description"], job["prompt"], job.get("name"))
                error: str | None = None

                try:
                    pool.spawn(_bound(subagents, request), task_id=job["task_id"], name=request.name, description=request.description)
                except (CapacityExceeded, NameInUse, StoreUnavailable) as exc:
                    error = str(exc)
                client.rpush(job["reply"], json.dumps({"error": error, "pid": pid}))
                client.expire(job["reply"], 60)
    client.close()


def _bound(subagents: Any, request: TaskRequest) -> Any:
    async def subagent(ctx: Any) -> Any:
        return await subagents(request, ctx)

    return subagent


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A demo worker process: serve spawns routed to ``--session`` until told to stop (or
    until the process that started it is gone)."""
    parser = argparse.ArgumentParser(prog="python -m followups.demo_workers")
    parser.add_argument("--store", required=True, metavar="URL", help="the redis:// store the demo runs on")
    parser.add_argument("--session", required=True, help="the session whose spawns this worker serves")
    parser.add_argument("--max-concurrent", type=int, default=4, metavar="N")
    parser.add_argument("--relay-dir", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    anyio.run(_serve, args.store, args.session, args.max_concurrent, args.relay_dir, backend="trio")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
