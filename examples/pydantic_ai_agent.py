"""A pydantic-ai agent that runs a subagent in the background and gets its result as a reminder.

The agent has the ``task`` tools (``task_toolset``) and the ``FollowupReminders`` capability. Its
model (an offline ``FunctionModel`` standing in for a real one) starts a test run in the
background and ends its turn. The run does not end: it waits for the subagent, then continues
with one ``<system-reminder>`` user turn carrying the result. The script prints the model input
that carries it, then runs a follow-up turn on the same history to show the reminder is not
injected again. Needs ``pip install 'followups[pydantic-ai]'``.

Run it (offline, under a second):

    python examples/pydantic_ai_agent.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from pydantic_ai import (
    Agent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from followups import BackgroundStore, FollowupSettings, SubagentPool, TaskRequest
from followups.adapters.pydantic_ai import FollowupReminders, prompt_text, task_toolset

model_inputs: list[list[ModelMessage]] = []


def carries_reminder(message: ModelMessage) -> bool:
    return isinstance(message, ModelRequest) and any(
        isinstance(part, UserPromptPart) and prompt_text(part).startswith("<system-reminder>")
        for part in message.parts
    )


async def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for a real model: reacts to the last message of its input."""
    model_inputs.append(list(messages))
    last = messages[-1]
    if carries_reminder(last):
        return ModelResponse(parts=[TextPart("The background run found 2 failing tests in test_api.py.")])
    if any(isinstance(part, ToolReturnPart) for part in last.parts):
        return ModelResponse(parts=[TextPart("The tests are running in the background; I will report back.")])
    if len(messages) > 1:
        return ModelResponse(parts=[TextPart("I will look at test_api.py next.")])
    return ModelResponse(parts=[ToolCallPart("task", {"description": "run tests", "prompt": "pytest -q"})])


async def run_tests(request: TaskRequest) -> str:
    """The subagent: here a stand-in for a slow test run."""
    await asyncio.sleep(0.2)
    return "2 failing tests in test_api.py: test_login, test_logout"


def describe(message: ModelMessage) -> str:
    lines = []
    for part in message.parts:
        if isinstance(part, UserPromptPart):
            lines.append(f"[user] {prompt_text(part)}")
        elif isinstance(part, ToolCallPart):
            lines.append(f"[assistant] tool call {part.tool_name}({json.dumps(part.args_as_dict())})")
        elif isinstance(part, ToolReturnPart):
            first_sentence = str(part.content).split(". ")[0]
            lines.append(f"[tool {part.tool_name}] {first_sentence}. ...")
        elif isinstance(part, TextPart):
            lines.append(f"[assistant] {part.content}")
    return "\n".join(lines)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        async with SubagentPool(store) as pool:
            agent = Agent(
                FunctionModel(scripted_model),
                instructions="You are a coding assistant.",
                toolsets=[task_toolset(pool, run_tests)],
                capabilities=[FollowupReminders(store)],
            )
            result = await agent.run("Run the test suite and tell me what fails.")
            print(f"output: {result.output}\n")

            call_number, carrying = next(
                (number, messages)
                for number, messages in enumerate(model_inputs, start=1)
                if any(carries_reminder(message) for message in messages)
            )
            print(f"=== model call {call_number} of {len(model_inputs)}: the input that carries the reminder ===")
            print("\n".join(describe(message) for message in carrying))

            calls_so_far = len(model_inputs)
            follow_up = await agent.run("Thanks. What next?", message_history=result.all_messages())
            print(f"\nfollow-up output: {follow_up.output}")
            later = model_inputs[calls_so_far:]
            counts = [sum(carries_reminder(message) for message in messages) for messages in later]
            verdict = "1 reminder in history, none injected again" if set(counts) == {1} else f"reminders: {counts}"
            print(f"later model calls: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
