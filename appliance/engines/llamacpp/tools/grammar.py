"""GBNF grammars from the tools' JSON Schemas: a call is then always valid JSON that matches its schema."""

from __future__ import annotations

import functools
import json
from typing import Any

from appliance.engines.llamacpp.schema_grammar import BoundedConverter, GrammarTooLarge, converted
from appliance.engines.llamacpp.tools.formats import ToolFormat
from appliance.errors import InvalidRequestError
from appliance.settings import SchemaLimits
from appliance.wire.schema_limits import check_schema

ANY_OBJECT: dict[str, Any] = {"type": "object"}
DEFAULT_LIMITS = SchemaLimits()


def _literal(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a GBNF string literal


SMALL_RANGE = 256
"""Integer ranges up to this many values become an enum: the converter has no grammar for minimum/maximum."""


def _ranges_as_enums(schema: Any) -> Any:
    """The schema with every small bounded integer range written as the enum of its values."""
    if isinstance(schema, list):
        return [_ranges_as_enums(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rewritten = {key: _ranges_as_enums(value) for key, value in schema.items()}
    low, high = rewritten.get("minimum"), rewritten.get("maximum")
    if (
        rewritten.get("type") == "integer"
        and isinstance(low, int)
        and isinstance(high, int)
        and 0 <= high - low < SMALL_RANGE
    ):
        return {"enum": list(range(low, high + 1))}
    return rewritten


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool["function"].get("parameters")
    return _ranges_as_enums(parameters) if parameters else ANY_OBJECT


def _visit(converter: Any, tool: dict[str, Any], rule: str) -> str:
    name = tool["function"]["name"]
    try:
        schema = converter.resolve_refs(_parameters(tool), "request")
        return str(converter.visit(schema, rule))
    except GrammarTooLarge:
        raise  # the budget is the whole request's, not this tool's: `converted` names it
    # The converter is pure code over the schema: whatever it raises (it asserts on some) is its fault.
    except Exception as error:
        raise InvalidRequestError(
            f"the parameters schema of tool `{name}` is not supported: {error}"[:300], param="tools"
        ) from error


def _checked(tools: list[dict[str, Any]], limits: SchemaLimits) -> None:
    """The limits on each tool's parameters schema, before any conversion (400 naming `tools`)."""
    for tool in tools:
        parameters = tool["function"].get("parameters")
        if parameters is not None:
            what = f"the parameters schema of tool `{tool['function']['name']}`"
            check_schema(parameters, limits, param="tools", what=what)


@functools.lru_cache(maxsize=256)
def _arguments_grammar(tool_json: str, limits: SchemaLimits) -> str:
    def convert() -> str:
        converter: Any = BoundedConverter(limits)
        _visit(converter, json.loads(tool_json), "")  # "" names the rule root, as json_schema_to_gbnf does
        return str(converter.format_grammar())

    return converted(limits, "tools", "the tool's parameters schema", convert)


def arguments_grammar(tool: dict[str, Any], limits: SchemaLimits = DEFAULT_LIMITS) -> str:
    """The grammar of one tool's arguments object alone (a named call whose opening is in the prompt)."""
    _checked([tool], limits)
    return _arguments_grammar(json.dumps(tool, sort_keys=True), limits)


@functools.lru_cache(maxsize=256)
def _tool_grammar(tools_json: str, parallel: bool, fmt: ToolFormat, limits: SchemaLimits) -> str:
    return converted(
        limits,
        "tools",
        "the tools' parameters schemas",
        lambda: _calls_grammar(tools_json, parallel, fmt, limits),
    )


def _calls_grammar(tools_json: str, parallel: bool, fmt: ToolFormat, limits: SchemaLimits) -> str:
    converter: Any = BoundedConverter(limits)
    calls = []
    for index, tool in enumerate(json.loads(tools_json)):
        arguments = _visit(converter, tool, f"tool{index}-arguments")
        opening = _literal(fmt.call_open(tool["function"]["name"]))
        calls.append(f"{opening} {arguments} {_literal(fmt.call_close)}")
    converter._add_rule("call", " | ".join(f"( {call} )" for call in calls))
    more = f" ( {_literal(fmt.separator)} call )*" if parallel else ""
    converter._add_rule("root", f"{_literal(fmt.begin)} call{more} {_literal(fmt.end)}")
    return str(converter.format_grammar())


def tool_grammar(
    tools: list[dict[str, Any]], parallel: bool, fmt: ToolFormat, limits: SchemaLimits = DEFAULT_LIMITS
) -> str:
    """The grammar of an answer that is only calls to `tools` in `fmt` (exactly one unless `parallel`);
    compiled once per distinct set of tools (an lru cache on their canonical JSON). A schema over `limits`,
    or one the converter cannot take, is a 400 naming `tools`."""
    _checked(tools, limits)
    return _tool_grammar(json.dumps(tools, sort_keys=True), parallel, fmt, limits)


def forced_prefix(fmt: ToolFormat, name: str) -> str:
    """The text of a call to `name` up to its arguments, which the worker prefills with the prompt."""
    return fmt.begin + fmt.call_open(name)


def clear_grammar_caches() -> None:
    """Forget every compiled grammar (the benchmark times a cold compile with it)."""
    _tool_grammar.cache_clear()
    _arguments_grammar.cache_clear()
