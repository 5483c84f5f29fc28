"""Every adapter refuses idle wake-up options that make no sense, naming the option, before it
does anything else."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from followups import BackgroundStore, SubagentPool
from followups.adapters._idle import check_idle_options

BAD = [
    ({"idle_timeout": 0}, "idle_timeout must be a positive number of seconds or None, got 0"),
    ({"idle_timeout": -1.5}, "idle_timeout must be a positive number of seconds or None, got -1.5"),
    ({"idle_timeout": True}, "idle_timeout must be a positive number of seconds or None, got True"),
    ({"idle_timeout": "soon"}, "idle_timeout must be a positive number of seconds or None, got 'soon'"),
    ({"max_idle_resumes": -1}, "max_idle_resumes must be a non-negative int, got -1"),
    ({"max_idle_resumes": 2.0}, "max_idle_resumes must be a non-negative int, got 2.0"),
    ({"max_idle_resumes": False}, "max_idle_resumes must be a non-negative int, got False"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_idle_options_are_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    given = {"idle_timeout": None, "max_idle_resumes": 16, **options}
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_idle_options(**given)


def test_sensible_idle_options_are_accepted() -> None:
    for timeout in (None, 0.05, 30):
        for resumes in (0, 16):
            check_idle_options(timeout, resumes)


async def _async_loop(store: BackgroundStore, **options: Any) -> None:
    from followups.adapters.anthropic_messages import run_agent_loop

    await run_agent_loop(None, store, messages=[], **options)  # type: ignore[arg-type]


def _adapters() -> dict[str, tuple[str, Callable[..., Any]]]:
    return {
        "langchain": ("langchain", lambda store, **o: _module("langchain_agents").FollowupMiddleware(store, **o)),
        "openai-agents": ("agents", lambda store, **o: _module("openai_agents").FollowupRunner(store, **o)),
        "pydantic-ai": ("pydantic_ai", lambda store, **o: _module("pydantic_ai").FollowupReminders(store, **o)),
        "claude-agent-sdk": (
            "claude_agent_sdk",
            lambda store, **o: _module("claude_agent_sdk").ClaudeFollowups(SubagentPool(store), _subagent, **o),
        ),
        "anthropic": ("anthropic", lambda store, **o: anyio.run(lambda: _async_loop(store, **o))),
    }


def _module(name: str) -> Any:
    return importlib.import_module(f"followups.adapters.{name}")


async def _subagent(request: object) -> str:
    return "never runs"


@pytest.mark.parametrize("adapter", sorted(_adapters()))
@pytest.mark.parametrize(("options", "message"), [BAD[0], BAD[4]])
def test_each_adapter_refuses_bad_idle_options(
    adapter: str, options: dict[str, Any], message: str, store: BackgroundStore
) -> None:
    framework, build = _adapters()[adapter]
    pytest.importorskip(framework)
    with pytest.raises(ValueError, match=f"^{message}$"):
        build(store, **options)
