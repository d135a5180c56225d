"""The gateway's own checks of the costly parts of a request, at their boundaries, before any engine sees
it: so a vLLM link (whose grammar compilers are not ours) gets the same protection as a llama.cpp one."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from api.limits import RequestLimits
from appliance.errors import InvalidRequestError
from appliance.protocol import ChatCompletionRequest, EmbeddingRequest, decode_request
from appliance.settings import LimitSettings, SchemaLimits, SettingsFile
from tests.api.fakes import user_key

LIMITS = LimitSettings(
    max_stop_chars=8,
    max_embedding_inputs=3,
    max_embedding_chars=10,
    schema=SchemaLimits(max_bytes=200, max_depth=4, max_repetition=10),
)


def _admit(body: dict[str, Any], kind: type[Any] = ChatCompletionRequest) -> None:
    raw = msgspec.json.encode(body)
    RequestLimits(LIMITS).admit(user_key(), len(raw), decode_request(raw, kind))


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **extra}


def _schema(schema: Any) -> dict[str, Any]:
    return _chat(response_format={"type": "json_schema", "json_schema": {"schema": schema}})


def _tools(parameters: Any, tool_choice: str = "auto") -> dict[str, Any]:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    return _chat(tools=[tool], tool_choice=tool_choice)


def _refused(body: dict[str, Any], param: str, kind: type[Any] = ChatCompletionRequest) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        _admit(body, kind)
    assert caught.value.param == param
    return caught.value.message


def test_the_defaults_are_documented_values() -> None:
    """Safe defaults: what settings.toml may say, and what README's settings section shows."""
    limits = SettingsFile().limits
    assert (limits.max_stop_chars, limits.max_embedding_inputs, limits.max_embedding_chars) == (
        256,
        2048,
        262_144,
    )
    assert limits.schema == SchemaLimits(
        max_bytes=65_536, max_depth=32, max_repetition=1_000, max_grammar_bytes=262_144
    )


@pytest.mark.parametrize("keyword", ["minLength", "maxLength", "minItems", "maxItems"])
def test_repetition_counts_at_the_limit_pass_one_more_is_400(keyword: str) -> None:
    """Each repetition keyword, anywhere in the schema: max_repetition passes, one more is refused."""
    _admit(_schema({"type": "object", "properties": {"a": {keyword: 10}}}))
    message = _refused(_schema({"type": "object", "properties": {"a": {keyword: 11}}}), "response_format")
    assert "11" in message


@pytest.mark.parametrize("pattern", ["^a{11}$", "^a{0,11}$", "^a{11,}$", "^(ab){2,1_1}$"])
def test_pattern_quantifiers_count_as_repetitions(pattern: str) -> None:
    """{m}, {m,n} and {m,} as the converter reads them (int() takes underscores too)."""
    _admit(_schema({"type": "string", "pattern": "^a{10}$"}))
    _refused(_schema({"type": "string", "pattern": pattern}), "response_format")


def test_depth_and_size_at_the_limit_pass_one_more_is_400() -> None:
    """Four levels of JSON nesting pass and five do not; 200 bytes pass and 201 do not."""
    _admit(_schema({"items": {"items": {"items": {}}}}))
    _refused(_schema({"items": {"items": {"items": {"items": {}}}}}), "response_format")
    padding = 200 - len(msgspec.json.encode({"description": ""}))
    _admit(_schema({"description": "x" * padding}))
    assert "201 bytes" in _refused(_schema({"description": "x" * (padding + 1)}), "response_format")


def test_names_that_look_like_keywords_are_not_counts() -> None:
    """A property named maxLength holds a schema, not a count; a property named pattern is not a pattern."""
    _admit(_schema({"properties": {"maxLength": {"type": "string"}, "pattern": {"type": "string"}}}))


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_tool_schemas_are_checked_when_tools_are_offered(tool_choice: str) -> None:
    """The worker compiles the tools' grammar in every mode, so every mode is checked; `none` offers none."""
    hostile = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 10**8}}}
    assert "tools[0]" in _refused(_tools(hostile, tool_choice), "tools")
    _admit(_tools(hostile, "none"))


def test_stop_strings_at_the_limit_pass_longer_or_more_are_400() -> None:
    """Up to max_stop_chars characters each, up to four of them."""
    _admit(_chat(stop=["12345678"] * 4))
    _refused(_chat(stop=["123456789"]), "stop")
    _refused(_chat(stop="123456789"), "stop")
    _refused(_chat(stop=["a"] * 5), "stop")


def test_embedding_inputs_at_the_limit_pass_more_are_400() -> None:
    """Count and total characters (a token id counts as one) of the inputs."""
    _admit({"model": "m", "input": ["abc", "def", "ghij"]}, EmbeddingRequest)
    _refused({"model": "m", "input": ["a", "b", "c", "d"]}, "input", EmbeddingRequest)
    _refused({"model": "m", "input": ["abcdef", "ghijk"]}, "input", EmbeddingRequest)
    _admit({"model": "m", "input": list(range(10))}, EmbeddingRequest)
    _refused({"model": "m", "input": list(range(11))}, "input", EmbeddingRequest)
    _refused({"model": "m", "input": "x" * 11}, "input", EmbeddingRequest)
