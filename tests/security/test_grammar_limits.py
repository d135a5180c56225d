"""JSON Schemas that become grammars, end to end with the official client: a hostile or broken schema in
`response_format` or `tools` is a quick 400 naming that parameter, streamed or not, and the worker that would
have converted it keeps serving (a 60-byte schema used to crash it after 10 s and 2.6 GB)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.server import RunningAppliance, start_appliance
from tests.security.helpers import engine_pids, openai_client

HOSTILE = {"type": "string", "maxLength": 100_000_000}
"""Issue 17's schema: converted without limits it was a 762 MB grammar that overflowed llama.cpp's parser."""
DEEP: dict[str, Any] = json.loads('{"type": "array", "items": ' * 40 + "{}" + "}" * 40)
MANY_OPTIONAL = {"type": "object", "properties": {f"field{i}": {"type": "string"} for i in range(600)}}
"""A second of CPU in the converter (it rewrites the optional properties' rules for each one), for 17 KB."""
BAD_SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("a string of up to 10^8 characters", HOSTILE),
    ("a pattern repeated 100,000 times", {"type": "string", "pattern": "^a{1,100000}$"}),
    ("an array of up to 5,000 items", {"type": "array", "items": {}, "maxItems": 5000}),
    ("nested 40 levels deep", DEEP),
    ("larger than 64 KiB", {"enum": ["x" * 70_000]}),
    ("600 optional properties", MANY_OPTIONAL),
    ("an unknown type", {"type": "foo"}),
    ("a pattern without ^…$", {"type": "string", "pattern": "abc"}),
    ("a reference to nothing", {"$ref": "#/$defs/missing"}),
    ("a property schema that is a number", {"type": "object", "properties": {"a": 5}}),
    ("an empty anyOf (a grammar llama.cpp refuses)", {"anyOf": []}),
]
SETTINGS = "[limits]\nmax_tokens = 8\n"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """One appliance for this module, with the default schema limits."""
    running = start_appliance(tmp_path_factory.mktemp("grammar") / "home", model_path, settings=SETTINGS)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _response_format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _tool(parameters: dict[str, Any]) -> Any:
    return {"type": "function", "function": {"name": "lookup", "parameters": parameters}}


def _chat(appliance: RunningAppliance, stream: bool, **extra: Any) -> None:
    """One chat request, read to its end: a stream that began raises only on its error event."""
    answer = openai_client(appliance).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], stream=stream, **extra
    )
    if stream:
        list(answer)


def _refused(error: openai.BadRequestError, param: str) -> None:
    assert error.status_code == 400
    body = error.body
    assert isinstance(body, dict)
    assert body["param"] == param, body
    assert body["type"] == "invalid_request_error", body


def test_the_hostile_schema_is_a_quick_400_and_the_worker_lives(appliance: RunningAppliance) -> None:
    """{"type": "string", "maxLength": 100000000}: refused in well under a second; same worker after."""
    client = openai_client(appliance)
    pids = engine_pids(appliance)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Hi"}],
            response_format=_response_format(HOSTILE),
        )
    assert time.monotonic() - started < 5.0
    _refused(refused.value, "response_format")
    assert "1000" in refused.value.message, "the message says what the limit is"
    answer = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None
    assert engine_pids(appliance) == pids, "the worker did not crash and restart"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(("what", "schema"), BAD_SCHEMAS, ids=[what for what, _ in BAD_SCHEMAS])
def test_a_bad_response_format_schema_is_a_400_naming_it(
    appliance: RunningAppliance, what: str, schema: dict[str, Any], stream: bool
) -> None:
    """Over a limit or beyond the converter: 400 `response_format` before any token, never a 500 or an
    error in the middle of a stream."""
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(appliance, stream, response_format=_response_format(schema))
    _refused(refused.value, "response_format")


def test_completions_take_the_same_limits(appliance: RunningAppliance) -> None:
    """/v1/completions converts response_format too: the same 400."""
    client = openai_client(appliance)
    for schema in (HOSTILE, {"type": "foo"}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(
                model="default",
                prompt="Answer:",
                extra_body={"response_format": _response_format(schema)},
            )
        _refused(refused.value, "response_format")


@pytest.mark.parametrize("tool_choice", ["required", "auto", "named"])
@pytest.mark.parametrize(("what", "schema"), BAD_SCHEMAS[:3], ids=[what for what, _ in BAD_SCHEMAS[:3]])
def test_tool_schemas_take_the_same_limits_and_name_tools(
    appliance: RunningAppliance, what: str, schema: dict[str, Any], tool_choice: str
) -> None:
    """A tool whose parameters hold a hostile schema: 400 `tools`, whatever tool_choice says."""
    parameters = {"type": "object", "properties": {"query": schema}, "required": ["query"]}
    choice: Any = (
        {"type": "function", "function": {"name": "lookup"}} if tool_choice == "named" else tool_choice
    )
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(appliance).chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Look up cats"}],
            tools=[_tool(parameters)],
            tool_choice=choice,
        )
    _refused(refused.value, "tools")


def test_a_tool_grammar_llama_cpp_refuses_is_a_400_before_the_stream(appliance: RunningAppliance) -> None:
    """A parameter with an empty anyOf converts, but llama.cpp cannot parse the grammar: 400 `tools`, not an
    error event after a 200."""
    parameters = {"type": "object", "properties": {"query": {"anyOf": []}}, "required": ["query"]}
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(appliance, True, tools=[_tool(parameters)], tool_choice="required")
    _refused(refused.value, "tools")


def test_schemas_within_the_limits_still_constrain_the_answer(appliance: RunningAppliance) -> None:
    """The limits leave ordinary schemas alone: a bounded string and a small pattern are answered."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 1000}, "code": {"pattern": "^[A-Z]{2,3}$"}},
        "required": ["name", "code"],
    }
    answer = openai_client(appliance).chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Name a country and its code"}],
        response_format=_response_format(schema),
        max_tokens=8,
    )
    assert answer.choices[0].message.content, "a (possibly cut short) JSON answer"
