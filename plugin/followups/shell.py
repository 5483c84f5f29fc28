"""Background shell commands: ``spawn_shell`` runs a command as a task of kind ``shell``, saves
its whole output to a relay file as it streams, reports progress as line counts, and finishes
completed or failed by its exit status. Cancelling it stops the process: SIGTERM, then SIGKILL
after a grace period."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import anyio
import anyio.abc
from pydantic import BaseModel, Field

from .context import TaskContext
from .errors import NameInUse, StoreUnavailable
from .pool import SubagentPool
from .relay import RelayOutcome
from .state import TaskState
from .tools import Tool, ToolOutcome

__all__ = ["KILL_GRACE_SECONDS", "RunShellArgs", "shell_tool", "spawn_shell"]

KILL_GRACE_SECONDS = 5.0
_PROGRESS_EVERY_SECONDS = 1.0
_OWN_PROCESS_GROUP = sys.platform != "win32"


def spawn_shell(
    pool: SubagentPool,
    command: str,
    *,
    description: str = "",
    name: str | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``command`` (through the system shell) in the background and return its task id.

    The task is of kind ``shell`` and takes no subagent slot. Its standard output and standard
    error go, interleaved, into one relay file as they arrive, so the whole output is kept
    however large; the result is the relay's bounded preview naming that file. Exit status 0
    completes the task; any other status fails it, saying which, with the end of the preview.
    ``timeout`` (seconds) stops the command and fails the task. A cancel (``cancel_task``,
    ``cancel_all``, the pool closing) stops it too, and the task is cancelled with what it
    printed. Call it where :meth:`SubagentPool.spawn` may be called.
    """
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"command must be a non-empty string, got {command!r}")
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return pool.spawn(
        _run_command,
        command,
        timeout,
        name=name,
        kind="shell",
        description=description or command[:200],
        use_slot=False,
        inbox=False,
    )


async def _run_command(command: str, timeout: float | None, *, ctx: TaskContext) -> TaskState:
    session = ctx.session
    stream = session.relay.open_stream(f"shell-{ctx.task_id}")
    cancelled: BaseException | None = None
    timed_out = False
    process = await anyio.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=_OWN_PROCESS_GROUP
    )
    try:
        with anyio.move_on_after(math.inf if timeout is None else timeout) as deadline:
            await _copy_output(process, stream.write, ctx)
            await process.wait()
        timed_out = deadline.cancelled_caught
    except anyio.get_cancelled_exc_class() as exc:
        cancelled = exc
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                await _stop(process)
            outcome = stream.close()
            ctx.report_progress(f"{stream.lines} lines, {stream.size_bytes} bytes of output")
    if cancelled is not None:
        return TaskState.cancelled(_with_output("stopped by a cancel", outcome, session.settings.max_error_chars))
    status = process.returncode
    if timed_out:
        return TaskState.failed(_with_output(f"timed out after {timeout:g} s and was stopped", outcome, session.settings.max_error_chars))
    if status == 0:
        return TaskState.completed(outcome.text)
    return TaskState.failed(_with_output(f"exit status {status}", outcome, session.settings.max_error_chars))


async def _copy_output(process: anyio.abc.Process, write: Callable[[bytes], None], ctx: TaskContext) -> None:
    assert process.stdout is not None
    lines = 0
    next_report = anyio.current_time()
    async for chunk in process.stdout:
        write(chunk)
        lines += chunk.count(b"\n")
        now = anyio.current_time()
        if now >= next_report:
            ctx.report_progress(f"{lines} lines of output so far")
            next_report = now + _PROGRESS_EVERY_SECONDS


async def _stop(process: anyio.abc.Process) -> None:
    """SIGTERM, and SIGKILL if the process is still there after the grace period; to the whole
    process group, so the command's own children stop too."""
    _signal(process, signal.SIGTERM)
    with anyio.move_on_after(KILL_GRACE_SECONDS):
        await process.wait()
        return
    _signal(process, signal.SIGKILL)
    await process.wait()


def _signal(process: anyio.abc.Process, number: signal.Signals) -> None:
    try:
        if _OWN_PROCESS_GROUP:
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
    except ProcessLookupError:
        pass  # it has already exited


def _with_output(headline: str, outcome: RelayOutcome, limit: int) -> str:
    """``headline`` and the output's preview within ``limit`` characters: when it must be cut,
    its end is kept, which is where the line naming the saved file is."""
    text = f"The command {headline}. Its output:\n{outcome.text}" if outcome.text else f"The command {headline} with no output."
    if len(text) <= limit:
        return text
    head = f"The command {headline}. The end of its output:\n..."
    return head + text[len(text) - (limit - len(head)) :]


class RunShellArgs(BaseModel):
    command: str = Field(min_length=1, description="The shell command to run in the background.")
    description: str = Field(default="", max_length=200, description="A few words naming what it does.")
    name: str | None = Field(default=None, min_length=1, max_length=64, description="Optional short name.")


def shell_tool(pool: SubagentPool) -> Tool:
    """The model-facing ``run_shell`` tool: :func:`spawn_shell` over ``pool``. Its handler is
    synchronous, so it runs wherever the task tools run."""

    def run_shell(args: RunShellArgs) -> ToolOutcome:
        try:
            task_id = spawn_shell(pool, args.command, description=args.description, name=args.name)
        except (NameInUse, StoreUnavailable, ValueError) as exc:
            return ToolOutcome(str(exc), is_error=True)
        return ToolOutcome(
            f"Started background shell task {task_id} ({args.description or args.command[:80]}). Its whole output "
            f"is saved to a file; the result, with a preview, arrives automatically in a <system-reminder> "
            f"when the command exits. Do not poll."
        )

    return Tool(
        "run_shell",
        "Run a shell command in the background. Returns its task id at once; its output arrives later, by "
        "itself, in a <system-reminder>.",
        RunShellArgs,
        run_shell,
    )
