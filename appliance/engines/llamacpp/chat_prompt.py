"""From a chat request to what the scheduler runs: the prompt text (tools included), the grammar that
constrains the output, and the decoder that turns each choice's text into content or tool-call deltas."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.engines.llamacpp.choices import Decoder, PlainText
from appliance.engines.llamacpp.sampling import DEFAULT_LIMITS, grammar_for, needs_conversion
from appliance.engines.llamacpp.tools.formats import detect_format
from appliance.engines.llamacpp.tools.grammar import arguments_grammar, forced_prefix, tool_grammar
from appliance.engines.llamacpp.tools.prompt import tool_prompt
from appliance.engines.llamacpp.tools.stream import ToolCallStream
from appliance.errors import InvalidRequestError
from appliance.protocol import ChatCompletionRequest, ChatMessage
from appliance.settings import SchemaLimits
from appliance.wire.tools import NamedToolChoice, ToolDefinition, call_names


@dataclass(frozen=True)
class ChatPlan:
    """What one chat request runs: its prompt, its output grammar, a decoder per choice."""

    prompt: str
    grammar: str | None
    decoder: Callable[[], Decoder]
    tools: bool
    """Whether the model was offered tools (the answer may be tool calls; the grammar is theirs)."""

    @property
    def grammar_param(self) -> str:
        """The request parameter the grammar comes from, which a 400 about it names."""
        return "tools" if self.tools else "response_format"


def _arguments(text: str) -> Any:
    """A call's arguments as templates expect them (an object), or the text as sent if it is not one."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def message_dicts(messages: list[ChatMessage], names: dict[str, str]) -> list[dict[str, Any]]:
    """The messages as chat templates read them: Hugging Face's conventions for tool calls and results."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls:
            entry["content"] = message.text() or None
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments),
                    },
                }
                for call in message.tool_calls
            ]
        if message.role == "tool" and message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
            entry.setdefault("name", names.get(message.tool_call_id, ""))
        rendered.append(entry)
    return rendered


def _has_tool_history(messages: list[ChatMessage]) -> bool:
    return any(message.tool_calls or message.role == "tool" for message in messages)


def render_prompt(
    template: ChatTemplate, messages: list[ChatMessage], tools: list[ToolDefinition] | None
) -> str:
    """The prompt for `messages`, with `tools` offered (None: none), exactly as a completion renders it."""
    names = call_names([(m.role, m.tool_calls, m.tool_call_id) for m in messages])
    dicts = message_dicts(messages, names)
    if not tools and not _has_tool_history(messages):
        return template.render(dicts)
    fmt = detect_format(template.source, template.knows_tools)
    return tool_prompt(template, dicts, [msgspec.to_builtins(tool) for tool in tools or ()], fmt)


def needs_grammar_thread(body: ChatCompletionRequest) -> bool:
    """Whether planning `body` converts JSON Schemas (its tools', its response_format's): then it runs on the
    grammar thread, off the event loop."""
    response_format = msgspec.to_builtins(body.response_format) if body.response_format else None
    return body.wants_tools or needs_conversion(response_format)


def plan_chat(
    template: ChatTemplate, body: ChatCompletionRequest, limits: SchemaLimits = DEFAULT_LIMITS
) -> ChatPlan:
    """The prompt, grammar and decoders of a chat request (400 for tools and formats that clash, and for
    schemas over `limits` or that the converter cannot take)."""
    response_format = msgspec.to_builtins(body.response_format) if body.response_format else None
    offered = body.tools if body.wants_tools else None
    prompt = render_prompt(template, body.messages, offered)
    if not offered:
        return ChatPlan(prompt, grammar_for(response_format, limits), PlainText, tools=False)
    if response_format is not None and response_format.get("type") != "text":
        raise InvalidRequestError(
            "response_format together with tools is not supported; constrain the answer with one of them",
            param="response_format",
        )
    fmt = detect_format(template.source, template.knows_tools)
    tools = [msgspec.to_builtins(tool) for tool in offered]
    names = tuple(tool.function.name for tool in offered)
    parallel = body.parallel_tool_calls is not False
    choice = body.tool_choice or "auto"
    # Compiled (and cached) in every mode: a malformed schema is the request's fault, tool call or not.
    required = tool_grammar(tools, parallel, fmt, limits)
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        (tool,) = [tool for tool in tools if tool["function"]["name"] == name]
        # The call's opening is known: prefilled with the prompt in one batch, not decoded token by token.
        return ChatPlan(
            prompt + forced_prefix(fmt, name),
            arguments_grammar(tool, limits),
            lambda: ToolCallStream(fmt, names, forced_name=name),
            tools=True,
        )
    grammar = required if choice == "required" else None
    return ChatPlan(prompt, grammar, lambda: ToolCallStream(fmt, names), tools=True)
