"""The ``followups`` command line: ``followups demo`` and ``followups tasks``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import tasks_cli
from .demo import DemoOptions, run_demo
from .errors import FollowupsError
from .ledger.sqlite import default_store_path

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="followups",
        description="Background subagent results for agent loops, delivered as <system-reminder> messages.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run an offline session with a scripted model that fans out subagents",
        description=(
            "Run a session with a scripted model (no network, no API key). The main agent fans "
            "out subagents through the task tool with a concurrency cap: one is refused at the "
            "cap and retried later, one returns about 1 MB (relayed to a file), one fails with a "
            "very long error (capped), one is cancelled, and the rest succeed. Each model call's "
            "input is printed, so the injected <system-reminder> messages can be seen, with a "
            "status line as subagents start and finish."
        ),
    )
    demo.add_argument("--max-concurrent", type=_positive, default=4, metavar="N", help="subagents running at once (default 4)")
    demo.add_argument("--subagents", type=_positive, default=6, metavar="N", help="subagents to run in all (default 6)")
    demo.add_argument(
        "--backend", choices=("trio", "asyncio"), default="trio", help="event loop to run on (default trio)"
    )
    demo.add_argument(
        "--template-dir", type=Path, metavar="DIR", help="a directory of templates that override the defaults by name"
    )
    demo.add_argument(
        "--relay-dir", type=Path, metavar="DIR", help="where relayed outputs go (default: a new temporary directory)"
    )
    demo.add_argument(
        "--store",
        metavar="URL",
        help=(
            "run on this store: 'durable' (the default: the per-user database, "
            f"{default_store_path()}), sqlite:///relative.db, sqlite:////absolute.db, redis://host:port/db, "
            "or memory:// to keep nothing"
        ),
    )
    demo.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help=(
            "run the subagents in N worker processes on the --store (a redis:// URL); the main "
            "process runs the model loop and receives every result"
        ),
    )
    tasks_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tasks":
        return tasks_cli.run(args)
    store_url = args.store or "durable"
    if store_url == "durable":
        store_url = f"sqlite:///{default_store_path()}"
    # each run is a conversation of its own, so a durable store keeps every run apart
    session = f"demo-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    options = DemoOptions(
        max_concurrent=args.max_concurrent,
        subagents=args.subagents,
        backend=args.backend,
        template_dir=args.template_dir,
        relay_dir=args.relay_dir.resolve() if args.relay_dir else None,
        store_url=store_url,
        session=session,
        workers=args.workers or 0,
    )
    try:
        run_demo(options, sys.stdout)
    except (FollowupsError, ValueError) as exc:
        print(f"followups demo: {exc}", file=sys.stderr)
        return 2
    return 0
