"""Tool calling on the OpenAI wire: function tools, tool_choice, tool calls in the history, and the checks
that a request's tools and history make sense before any engine sees them (the gateway and the worker both
run them, so a worker called directly refuses the same requests)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequestError

FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]
"""OpenAI's rule for function names: letters, digits, underscores, dots and dashes, at most 64."""
MAX_TOOLS = 128
"""OpenAI's limit of tools per request."""


class FunctionDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`tools[].function`: a function the model may call, its parameters as a JSON Schema object."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One entry of `tools`; functions are the only kind of tool a chat completion takes."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(msgspec.Struct, kw_only=True):
    """The function a named tool_choice forces."""

    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`tool_choice: {"type": "function", "function": {"name": …}}`."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(msgspec.Struct, kw_only=True):
    """A call's function and its arguments as a JSON text (as the model wrote them)."""

    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    """One tool call of an assistant message in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def check_tools(tools: list[ToolDefinition] | None, tool_choice: ToolChoice | None) -> None:
    """Names unique, parameters an object schema, tool_choice naming a tool that exists (400 otherwise)."""
    if tools is None:
        if tool_choice is not None and tool_choice != "none":
            raise InvalidRequestError(
                "tool_choice is only allowed when tools are specified", param="tool_choice"
            )
        return
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"at most {MAX_TOOLS} tools may be sent, got {len(tools)}", param="tools")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool.function
        if function.name in names:
            raise InvalidRequestError(
                f"tools[{index}]: the function name `{function.name}` is used twice", param="tools"
            )
        names.add(function.name)
        schema = function.parameters
        if schema is not None and schema.get("type", "object") != "object":
            raise InvalidRequestError(
                f"tools[{index}] (`{function.name}`): parameters must be a JSON Schema of type object",
                param="tools",
            )
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice names the function `{tool_choice.function.name}`, which is not among the tools",
            param="tool_choice",
        )


def check_tool_history(calls_by_message: list[tuple[str, list[ToolCall] | None, str | None]]) -> None:
    """Every tool message answers a call an earlier assistant message made, once (400 naming `messages`).

    `calls_by_message` is each message's role, its tool_calls and its tool_call_id, in order.
    """
    open_calls: dict[str, str] = {}
    for index, (role, calls, call_id) in enumerate(calls_by_message):
        if role == "assistant" and calls:
            open_calls.update((call.id, call.function.name) for call in calls)
        elif role == "tool":
            if not call_id:
                raise InvalidRequestError(
                    f"messages[{index}]: a tool message needs the tool_call_id it answers", param="messages"
                )
            if call_id not in open_calls:
                raise InvalidRequestError(
                    f"messages[{index}]: tool_call_id `{call_id}` answers no tool call of an earlier "
                    "assistant message",
                    param="messages",
                )
            del open_calls[call_id]


def call_names(calls_by_message: list[tuple[str, list[ToolCall] | None, str | None]]) -> dict[str, str]:
    """The function name of every call id in the history (a tool message names only its call)."""
    return {
        call.id: call.function.name
        for role, calls, _ in calls_by_message
        if role == "assistant" and calls
        for call in calls
    }
