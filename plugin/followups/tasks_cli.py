"""``followups tasks``: the tasks of a store, for any app built on ``followups``.

| command | what it does |
| --- | --- |
| ``followups tasks [--store URL] [--session S] [--status …] [--json]`` | lists tasks |
| ``followups tasks show ID`` | prints the record and the relayed file's path |
| ``followups tasks cancel ID`` | records a cancel request; the owning process carries it out |
| ``followups tasks gc`` | removes finished records whose notifications were delivered |

The store is ``--store``, else ``$FOLLOWUPS_STORE_URL``, else the per-user durable database
(:func:`followups.ledger.sqlite.default_store_path`). Output is plain text (``--json`` for
scripts); a bad id or store exits non-zero with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .errors import FollowupsError
from .ledger import STORE_URL_VARIABLE, BackendUnavailable
from .ledger.sqlite import default_store_path, sqlite_path
from .settings import FollowupSettings
from .state import BackgroundTask, TaskState, TaskStatus
from .store import BackgroundStore

__all__ = ["add_parser", "run"]

_STATUSES = [status.value for status in TaskStatus]


class CommandError(Exception):
    """A one-line failure of a ``tasks`` command (exit status 1)."""


class NoStore(CommandError):
    """The store's database file does not exist (listing it is not an error)."""


def _common(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    default: Any = argparse.SUPPRESS if nested else None
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help=f"the store: sqlite:///relative.db or sqlite:////absolute.db (default: ${STORE_URL_VARIABLE}, "
        f"else {default_store_path()})",
    )
    parser.add_argument("--session", metavar="S", default=default, help="only this session")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if nested else False, help="output for scripts")


def add_parser(commands: Any) -> None:
    """Add the ``tasks`` command to the subparsers ``commands`` of the ``followups`` parser."""
    tasks = commands.add_parser(
        "tasks",
        help="list, show, cancel and clean up the tasks of a store",
        description="The tasks of a followups store: list them (the default), show one, cancel one, or remove finished ones.",
    )
    _common(tasks, nested=False)
    tasks.add_argument(
        "--status", action="append", choices=_STATUSES, metavar="STATUS", help=f"only these ({', '.join(_STATUSES)}); repeatable"
    )
    actions = tasks.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="print one task's record and its relayed file's path")
    show.add_argument("id", help="task id (or name)")
    _common(show, nested=True)
    cancel = actions.add_parser("cancel", help="ask the process running a task to cancel it")
    cancel.add_argument("id", help="task id (or name)")
    _common(cancel, nested=True)
    gc = actions.add_parser("gc", help="remove finished records whose notifications were delivered")
    _common(gc, nested=True)


def store_url(given: str | None) -> str:
    """``given``, else ``$FOLLOWUPS_STORE_URL``, else the per-user durable database."""
    return given or os.environ.get(STORE_URL_VARIABLE) or f"sqlite:///{default_store_path()}"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Carry out a parsed ``tasks`` command, writing to ``out`` and ``err`` (default: stdout and
    stderr); returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    url = store_url(args.store)
    try:
        if url.lower().startswith("sqlite:") and not sqlite_path(url).exists():
            raise NoStore(f"no task store at {sqlite_path(url)}")
        with BackgroundStore.open(url, FollowupSettings()) as store:
            action = args.action or "list"
            if action == "list":
                _list(store, args, out)
            elif action == "show":
                _show(store, args, out)
            elif action == "cancel":
                _cancel(store, args, out)
            else:
                _gc(store, args, out)
    except NoStore as exc:
        if (args.action or "list") == "list":
            out.write("[]\n" if args.json else f"no tasks: {exc}\n")
            return 0
        err.write(f"followups tasks: {exc}\n")
        return 1
    except CommandError as exc:
        err.write(f"followups tasks: {exc}\n")
        return 1
    except (FollowupsError, BackendUnavailable, ValueError, OSError) as exc:
        err.write(f"followups tasks: {exc}\n")
        return 1
    return 0


def _tasks(store: BackgroundStore, session: str | None) -> list[BackgroundTask]:
    """The store's tasks, with what their owning processes could not commit yet."""
    tasks = store.list_all(session=session)
    unpersisted = getattr(store.backend, "unpersisted", None)
    kept = unpersisted() if unpersisted is not None else {}
    if not kept:
        return tasks
    shown = []
    for task in tasks:
        found = kept.get((task.origin_session or task.session, task.id, task.generation))
        if found is not None:
            status, error = found
            task = dataclasses.replace(task, state=TaskState(TaskStatus(status), task.state.text), persistence_error=error)
        shown.append(task)
    return shown


def _find(store: BackgroundStore, args: argparse.Namespace) -> BackgroundTask:
    key = args.id
    tasks = _tasks(store, args.session)
    matches = [task for task in tasks if task.id == key] or [task for task in tasks if task.name == key]
    if not matches and args.session is not None:
        raise CommandError(f"no task {key!r} in session {args.session!r} of {store.backend.url}")
    if not matches:
        raise CommandError(f"no task {key!r} in {store.backend.url}")
    sessions = sorted({task.session for task in matches})
    if len(sessions) > 1:
        raise CommandError(f"task {key!r} is in several sessions ({', '.join(sessions)}); pass --session")
    return matches[0] if len(matches) == 1 else _pick(matches, key)


def _pick(matches: list[BackgroundTask], key: str) -> BackgroundTask:
    """Of several tasks of one session named ``key``, the live one, else the most recent."""
    live = [task for task in matches if task.is_live]
    return live[0] if live else max(matches, key=lambda task: task.generation)


def as_json(task: BackgroundTask) -> dict[str, Any]:
    """The fields ``--json`` gives for a task."""
    return {
        "id": task.id,
        "session": task.session,
        "status": task.state.status.value,
        "kind": task.kind,
        "name": task.name,
        "progress": task.progress,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "persistence_error": task.persistence_error,
    }


def _age(task: BackgroundTask, now: float) -> str:
    seconds = max(0.0, now - task.created_at)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _clip(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _list(store: BackgroundStore, args: argparse.Namespace, out: TextIO) -> None:
    wanted = set(args.status or ())
    tasks = [task for task in _tasks(store, args.session) if not wanted or task.state.status.value in wanted]
    if args.json:
        json.dump([as_json(task) for task in tasks], out, indent=2)
        out.write("\n")
        return
    if not tasks:
        out.write("no tasks\n")
        return
    now = time.time()
    header = ("ID", "SESSION", "STATUS", "KIND", "NAME", "PROGRESS", "AGE", "PERSISTENCE ERROR")
    rows = [
        (
            task.id,
            task.session,
            task.state.status.value,
            task.kind,
            task.name or "-",
            _clip(task.progress, 40) or "-",
            _age(task, now),
            _clip(task.persistence_error, 60) or "-",
        )
        for task in tasks
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def _show(store: BackgroundStore, args: argparse.Namespace, out: TextIO) -> None:
    task = _find(store, args)
    if args.json:
        data = {field.name: getattr(task, field.name) for field in dataclasses.fields(task) if field.name != "state"}
        data["status"] = task.state.status.value
        data["text"] = task.state.text
        json.dump(data, out, indent=2)
        out.write("\n")
        return
    lines = [
        f"task {task.id} (session {task.session}, {task.kind}{', named ' + repr(task.name) if task.name else ''})",
        f"status: {task.state.status.value}",
    ]
    if task.description:
        lines.append(f"description: {task.description}")
    if task.parent:
        lines.append(f"parent: {task.parent}")
    lines.append(f"created: {_stamp(task.created_at)}")
    if task.started_at is not None:
        lines.append(f"started: {_stamp(task.started_at)}")
    if task.finished_at is not None:
        lines.append(f"finished: {_stamp(task.finished_at)}")
    if task.progress:
        lines.append(f"progress: {task.progress}")
    if task.cancel_requested_by:
        lines.append(f"cancel requested by: {task.cancel_requested_by}")
    if task.persistence_error:
        lines.append(f"persistence error: {task.persistence_error}")
    lines.append(f"relayed output: {task.relay_path or '-'}")
    if task.state.text:
        lines.append("")
        lines.append(task.state.text)
    out.write("\n".join(lines) + "\n")


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _cancel(store: BackgroundStore, args: argparse.Namespace, out: TextIO) -> None:
    task = _find(store, args)
    if not task.is_live:
        out.write(f"task {task.id} is not running (status: {task.state.status.value}); nothing to cancel\n")
        return
    store.session(task.session).cancel(task.id)
    out.write(f"cancel requested for task {task.id} (session {task.session}); the process running it carries it out\n")


def _gc(store: BackgroundStore, args: argparse.Namespace, out: TextIO) -> None:
    sessions = [args.session] if args.session is not None else store.sessions()
    removed = sum(store.session(session).gc_finished() for session in sessions)
    out.write(f"removed {removed} finished record(s)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``followups tasks …`` on its own (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="followups")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["tasks", *(argv or [])]))
