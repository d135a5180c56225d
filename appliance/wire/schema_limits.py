"""Bounds on a JSON Schema that is to become an output grammar, checked on the schema alone: the gateway runs
them before any engine sees the request (vLLM's converters get the same protection), the llama.cpp worker
again before it converts. What the grammar itself costs is bounded where it is written
(appliance/engines/llamacpp/schema_grammar.py)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from appliance.errors import InvalidRequestError
from appliance.protocol import ChatCompletionRequest, SamplingRequest
from appliance.settings import SchemaLimits

REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
"""The keywords whose count the converter writes out as that many copies of a rule."""
_QUANTIFIER = re.compile(r"\{([^{}]*)\}")


def _counts(node: dict[str, Any]) -> list[int | float]:
    """The repetition counts one schema object asks for: its keywords', and its pattern's {m,n}."""
    found: list[int | float] = [
        value
        for key in REPEAT_KEYWORDS
        if isinstance(value := node.get(key), int | float) and not isinstance(value, bool)
    ]
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        # Every {…} is read the way the converter reads a quantifier (int() of each part), escaped or not:
        # counting a literal brace as a quantifier can only refuse more, never let a large count through.
        for inner in _QUANTIFIER.findall(pattern):
            for part in inner.split(","):
                try:
                    found.append(int(part.strip()))
                except ValueError:
                    continue  # not a count: the converter refuses it, or it is a literal brace
    return found


def check_schema(schema: Any, limits: SchemaLimits, *, param: str, what: str) -> None:
    """Refuse (400 naming `param`) a schema nested deeper than `limits` allow, larger as compact JSON, or
    asking anywhere for a repetition count above max_repetition; `what` names it in the message."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:  # iterative: the nesting is what is being checked, so it must not cost recursion
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise InvalidRequestError(
                f"{what} is nested more than {limits.max_depth} levels deep", param=param
            )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
        if isinstance(node, dict):
            for count in _counts(node):
                if count > limits.max_repetition:
                    raise InvalidRequestError(
                        f"{what} asks to repeat something {count} times; at most "
                        f"{limits.max_repetition} are allowed (minLength, maxLength, minItems, maxItems and "
                        "{m,n} in patterns)",
                        param=param,
                    )
    size = len(msgspec.json.encode(schema))
    if size > limits.max_bytes:
        raise InvalidRequestError(
            f"{what} is {size} bytes as JSON; at most {limits.max_bytes} are allowed", param=param
        )


def check_request_schemas(body: SamplingRequest, limits: SchemaLimits) -> None:
    """Check the schemas of a request that become grammars: `response_format`'s, and each tool's parameters
    when tools are offered (the worker compiles them whatever tool_choice says)."""
    spec = body.response_format.json_schema if body.response_format is not None else None
    if spec is not None and spec.schema is not None:
        check_schema(spec.schema, limits, param="response_format", what="response_format's JSON Schema")
    if isinstance(body, ChatCompletionRequest) and body.wants_tools:
        for index, tool in enumerate(body.tools or ()):
            if tool.function.parameters is not None:
                what = f"the parameters schema of tools[{index}] (`{tool.function.name}`)"
                check_schema(tool.function.parameters, limits, param="tools", what=what)
