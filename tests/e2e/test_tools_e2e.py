"""Tool calling through the real gateway and worker, with the official `openai` client and its helpers.

The embedded default's template knows nothing of tools, so these run the generic format (the tools described
in a system message, the call constrained by a grammar); tests/e2e/test_tools_native_e2e.py runs a model
whose template is Hermes-style.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.e2e.server import RunningAppliance

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "send_email",
            "description": "Send an e-mail",
            "parameters": {
                "type": "object",
                "properties": {"to": {"type": "string"}, "subject": {"type": "string"}},
                "required": ["to"],
            },
        },
    },
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def oai(appliance: RunningAppliance) -> openai.OpenAI:
    """The real OpenAI client pointed at the appliance with the user key."""
    return openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


def _check_call(call: Any) -> dict[str, Any]:
    """A tool call in OpenAI's shape whose arguments validate against its tool's schema."""
    assert call.type == "function"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return dict(arguments)


def test_named_function_arguments_always_match_the_schema(oai: openai.OpenAI) -> None:
    """20 calls at temperature 1.0 (four requests of n=5, concurrently): every one valid, ids unique."""

    def ask(seed: int) -> Any:
        return oai.chat.completions.create(
            model="default",
            messages=ASK,
            tools=TOOLS,
            tool_choice=NAMED,
            temperature=1.0,
            n=5,
            seed=seed,
            max_tokens=64,
        )

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    ids: set[str] = set()
    for reply in replies:
        assert len(reply.choices) == 5
        for choice in reply.choices:
            assert choice.finish_reason == "tool_calls"
            assert choice.message.content is None
            (call,) = choice.message.tool_calls or []
            assert call.function.name == "get_weather"
            _check_call(call)
            ids.add(call.id)
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
    assert len(ids) == 20


def test_required_calls_one_of_the_tools(oai: openai.OpenAI) -> None:
    """tool_choice `required` with three tools: one or more calls, each valid for the tool it names."""
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=96,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls
    for call in calls:
        _check_call(call)


def test_required_without_parallel_calls_makes_exactly_one(oai: openai.OpenAI) -> None:
    """parallel_tool_calls false: exactly one call."""
    reply = oai.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=3,
        max_tokens=96,
    )
    assert len(reply.choices[0].message.tool_calls or []) == 1


class GetWeather(pydantic.BaseModel):
    """The weather forecast for a city."""

    city: str
    unit: str


def test_streamed_call_reassembled_by_the_sdk_helper(oai: openai.OpenAI) -> None:
    """The SDK's own stream helper rebuilds the call from our deltas (id/type/name first, then argument
    fragments) and parses it into the pydantic model; the same call, greedy, as the non-streamed answer."""
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    kwargs: Any = {
        "model": "default",
        "messages": ASK,
        "tools": [tool],
        "temperature": 0,
        "max_tokens": 64,
        "tool_choice": NAMED,
    }
    with oai.chat.completions.stream(**kwargs) as stream:
        names = [event.name for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert names == ["get_weather"]
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    (call,) = streamed.message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)
    whole = oai.chat.completions.create(**kwargs)
    (plain,) = whole.choices[0].message.tool_calls or []
    assert plain.function.arguments == call.function.arguments
    assert plain.function.name == call.function.name


def test_stream_deltas_are_shaped_as_openai_sends_them(appliance: RunningAppliance) -> None:
    """First delta of a call: index, id, type, name and empty arguments; later ones: index and a fragment."""
    body = {
        "model": "default",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": NAMED,
        "temperature": 0,
        "max_tokens": 64,
        "stream": True,
    }
    deltas: list[dict[str, Any]] = []
    reasons: list[str] = []
    with httpx.stream(
        "POST",
        f"{appliance.base_url}/v1/chat/completions",
        json=body,
        headers=appliance.headers(),
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            deltas += choice["delta"].get("tool_calls") or []
            if choice["finish_reason"]:
                reasons.append(choice["finish_reason"])
    first, *rest = deltas
    assert first["index"] == 0
    assert first["type"] == "function"
    assert first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest)
    jsonschema.validate(json.loads("".join(d["function"]["arguments"] for d in rest)), WEATHER)
    assert reasons == ["tool_calls"]


def test_two_turn_tool_conversation(oai: openai.OpenAI, client: httpx.Client) -> None:
    """The call, its result as a tool message, then the model answers in text from the result; the second
    prompt holds the call and its result (it is longer than the question alone)."""
    first = oai.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=64
    )
    assistant = first.choices[0].message
    (call,) = assistant.tool_calls or []
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny", "temperature": 21}'},
    ]
    second = oai.chat.completions.create(
        model="default", messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=32
    )
    answer = second.choices[0]
    assert answer.finish_reason in {"stop", "length"}
    assert answer.message.tool_calls is None
    assert answer.message.content
    assert second.usage is not None
    question = client.post("/tokenize", json={"model": "default", "messages": ASK}).json()["count"]
    assert second.usage.prompt_tokens > question + 20


BAD_TOOL_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "a tool message answering no call",
        {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
        "messages",
    ),
    (
        "a tool message without its call id",
        {"messages": [*ASK, {"role": "tool", "content": "1"}]},
        "messages",
    ),
    (
        "tool_choice naming an unknown function",
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    (
        "parameters that are not an object schema",
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            "tool_choice": "required",
        },
        "tools",
    ),
    (
        "a schema the grammar cannot take",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"type": "foo"}}},
                    },
                }
            ]
        },
        "tools",
    ),
    ("a tool of another type", {"tools": [{"type": "web_search"}]}, "tools"),
    (
        "a function name with spaces",
        {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
        "tools",
    ),
    ("the same function twice", {"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
]


@pytest.mark.parametrize(
    ("case", "fields", "param"), BAD_TOOL_REQUESTS, ids=[c[0] for c in BAD_TOOL_REQUESTS]
)
def test_bad_tool_input_is_a_400_naming_the_parameter(
    client: httpx.Client, case: str, fields: dict[str, Any], param: str
) -> None:
    """Each bad tool request: 400 in OpenAI's error shape naming the parameter; the worker keeps serving."""
    answer = client.post(
        "/v1/chat/completions", json={"model": "default", "messages": ASK, "max_tokens": 4, **fields}
    )
    assert answer.status_code == 400, (case, answer.text)
    error = answer.json()["error"]
    assert error["param"] == param, (case, error)
    assert error["type"] == "invalid_request_error"
    again = client.post("/v1/chat/completions", json={"model": "default", "messages": ASK, "max_tokens": 2})
    assert again.status_code == 200
