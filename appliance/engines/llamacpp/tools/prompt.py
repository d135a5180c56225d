"""The prompt of a conversation with tools: the template's own tool rendering where it has one, else the
tools described in a system message and the tool history rewritten as text any template can render."""

from __future__ import annotations

import json
from typing import Any

from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.engines.llamacpp.tools.formats import GENERIC, ToolFormat

INSTRUCTIONS = (
    "You can call these tools (functions):\n{tools}\n"
    "To call tools, answer with only this JSON, nothing before or after it:\n"
    '{{"tool_calls": [{{"name": "<tool name>", "arguments": {{<arguments as the parameters say>}}}}]}}\n'
    "Otherwise answer in plain text."
)
"""The generic wording (README "Tool calling"): each tool on its own line with its parameters' schema."""


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The system text that offers `tools` to a model whose template knows nothing of them."""
    lines = []
    for tool in tools:
        function = tool["function"]
        schema = json.dumps(function.get("parameters") or {"type": "object"}, separators=(",", ":"))
        description = f": {function['description']}" if function.get("description") else ""
        lines.append(f"- {function['name']}{description}. Parameters: {schema}")
    return INSTRUCTIONS.format(tools="\n".join(lines))


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _generic_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant calls as the generic JSON text; tool results as one user message per run of them (some
    templates insist that user and assistant alternate)."""
    rewritten: list[dict[str, Any]] = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [
                (c["function"]["name"], _arguments_text(c["function"]["arguments"]))
                for c in message["tool_calls"]
            ]
            text = (message.get("content") or "") + GENERIC.calls_text(calls)
            rewritten.append({"role": "assistant", "content": text})
        elif message["role"] == "tool":
            result = f"Tool result for {message.get('name', '')} (call {message.get('tool_call_id', '')}): "
            result += message.get("content") or ""
            if rewritten and rewritten[-1].get("tool_result"):
                rewritten[-1]["content"] += "\n" + result
            else:
                rewritten.append({"role": "user", "content": result, "tool_result": True})
        else:
            rewritten.append(message)
    return [{k: v for k, v in m.items() if k != "tool_result"} for m in rewritten]


def tool_prompt(
    template: ChatTemplate, messages: list[dict[str, Any]], tools: list[dict[str, Any]], fmt: ToolFormat
) -> str:
    """The prompt for `messages` with `tools` offered (may be empty: a history with calls, no tools now)."""
    if fmt is not GENERIC:
        return template.render(messages, tools=tools or None)
    history = _generic_history(messages)
    if tools:
        offer = describe_tools(tools)
        if history and history[0]["role"] in ("system", "developer"):
            history[0] = {**history[0], "content": f"{history[0].get('content') or ''}\n\n{offer}".lstrip()}
        else:
            history.insert(0, {"role": "system", "content": offer})
    return template.render(history)
