"""A LangChain agent (``create_agent``) that starts a subagent in the background and is told
its result in a ``<system-reminder>`` user turn, exactly once, even across a failed model call.

The model is LangChain's offline ``GenericFakeChatModel`` playing a script, so this runs without
network or keys; swap in any chat model with tool calling. ``FollowupMiddleware`` puts the
reminder into the agent's messages before a model call; ``langchain_task_tools`` gives the model
the ``task``, ``task_status`` and ``cancel_task`` tools over a ``SubagentPool``.

Run it (offline, under a second):

    python examples/langchain_agents_agent.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import Field

from followups import BackgroundStore, FollowupSettings, SubagentPool
from followups.adapters.langchain_agents import FollowupMiddleware, is_reminder_message, langchain_task_tools
from followups.tools import TaskRequest


class ScriptedChatModel(GenericFakeChatModel):
    """Plays its script; keeps each call's input; fails the next call when ``fail_next`` is set."""

    inputs: list[list[BaseMessage]] = Field(default_factory=list)
    fail_next: bool = False

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.inputs.append(list(messages))
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the model endpoint timed out")
        return super()._generate(messages, *args, **kwargs)


async def review(request: TaskRequest) -> str:
    await asyncio.sleep(0.05)
    return f"Reviewed ({request.prompt}): one unused import in cli.py."


def show(messages: Sequence[BaseMessage]) -> None:
    for message in messages:
        label = f"{message.type}, reminder" if is_reminder_message(message) else message.type
        calls = [tool_call["name"] for tool_call in getattr(message, "tool_calls", [])]
        print(f"[{label}]\n{message.text or f'(calls {calls})'}")


async def main() -> None:
    model = ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "task", "args": {"description": "review", "prompt": "review the diff"},
                         "id": "call-1", "type": "tool_call"}
                    ],
                ),
                "The review is running in the background.",
                "The review found one unused import in cli.py.",
            ]
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = BackgroundStore(FollowupSettings(relay_dir=Path(tmp) / "relay"))
        # By default the first run would wait for the review and continue by itself; this example
        # ends it, to show a failed model call between two user turns instead.
        middleware = FollowupMiddleware(store, resume_when_idle=False)
        async with SubagentPool(store) as pool:
            agent = create_agent(model, tools=langchain_task_tools(pool, review), middleware=[middleware])
            first = await agent.ainvoke({"messages": [HumanMessage("Review my diff.")]})
            await store.wait_for_notification()
            history = [*first["messages"], HumanMessage("Any news?")]

            model.fail_next = True
            try:
                await agent.ainvoke({"messages": history})
            except ConnectionError as exc:
                print(f"model call {len(model.inputs)} failed ({exc}); held for the retry: "
                      f"{len(middleware.unsettled_task_ids())} result(s)")
            final = await agent.ainvoke({"messages": history})

    retried = model.inputs[-1]
    print(f"\n=== model input of call {len(model.inputs)} ===")
    show(retried)
    print(f"\nreminders in that input: {sum(map(is_reminder_message, retried))}")
    print(f"reminders in the final history: {sum(map(is_reminder_message, final['messages']))}")
    print(f"answer: {final['messages'][-1].text}")


if __name__ == "__main__":
    asyncio.run(main())
