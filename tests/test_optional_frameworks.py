"""Frameworks are optional: importing followups (and its adapters package) imports none."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORK_MODULES = ("pydantic_ai", "agents", "langchain", "langgraph", "claude_agent_sdk", "anthropic", "openai")


def test_importing_followups_imports_no_agent_framework() -> None:
    probe = (
        "import sys, followups, followups.adapters\n"
        f"loaded = sorted(name for name in {FRAMEWORK_MODULES!r} if name in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
