"""POST /v1/responses through a running appliance with the official `openai` client, unchanged: plain and
streamed answers, the SDK's stream helper, instructions, max_output_tokens, structured output, function
tools over two turns, and bad input refused with a 400 naming the parameter."""

from __future__ import annotations

import json
from typing import Annotated, Any

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
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "parameters": WEATHER,
    },
    {
        "type": "function",
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
]
NAMED: Any = {"type": "function", "name": "get_weather"}
ASK = "What is the weather in Paris?"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}


class City(pydantic.BaseModel):
    """A city, as structured output the SDK parses."""

    city: Annotated[str, pydantic.Field(max_length=24)]


@pytest.fixture
def oai(appliance: RunningAppliance) -> openai.OpenAI:
    """The real OpenAI client pointed at the appliance with the user key."""
    return openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


def test_create_with_instructions(oai: openai.OpenAI) -> None:
    """A plain response: text in output_text, the served model, usage, ids in OpenAI's style."""
    response = oai.responses.create(
        model="default",
        instructions="You are brief.",
        input="Say hello.",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.model == "smollm2-135m"
    assert response.status in {"completed", "incomplete"}
    assert response.output_text
    assert response.output[0].type == "message"
    assert response.instructions == "You are brief."
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 16
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_served_through_the_fallback_chain(oai: openai.OpenAI) -> None:
    """The answer names the link that served it, as chat completions do."""
    raw = oai.responses.with_raw_response.create(model="default", input="Hi", max_output_tokens=4)
    assert raw.headers["x-served-model"] == "smollm2-135m"
    assert raw.parse().status in {"completed", "incomplete"}


def test_max_output_tokens_makes_it_incomplete(oai: openai.OpenAI) -> None:
    """A limit hit: status incomplete with reason max_output_tokens, no more tokens than asked."""
    response = oai.responses.create(
        model="default", input="Write a long story about a dragon.", max_output_tokens=3, temperature=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens <= 3
    assert response.max_output_tokens == 3


def test_stream_events(oai: openai.OpenAI) -> None:
    """stream=True: created, in_progress, the text events, then the final response with usage."""
    events = list(
        oai.responses.create(
            model="default", input="Count to five.", max_output_tokens=16, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in {"response.completed", "response.incomplete"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1]
    assert final.type in {"response.completed", "response.incomplete"}
    assert text
    assert final.response.output_text == text
    assert final.response.usage is not None
    assert 0 < final.response.usage.output_tokens <= 16
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1


def test_stream_helper_with_structured_output(oai: openai.OpenAI) -> None:
    """The SDK's responses.stream helper rebuilds the text from our events and parses it into the model."""
    with oai.responses.stream(
        model="default",
        input="Name a city in France.",
        text_format=City,
        max_output_tokens=48,
        temperature=0,
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    assert isinstance(final.output_parsed, City)


def test_parse_with_a_pydantic_model(oai: openai.OpenAI) -> None:
    """responses.parse: a strict json_schema format; the answer parses into the model."""
    response = oai.responses.parse(
        model="default", input="Name a city in Spain.", text_format=City, max_output_tokens=48, temperature=0
    )
    assert isinstance(response.output_parsed, City)


def test_json_schema_text_format(oai: openai.OpenAI) -> None:
    """text.format json_schema: the answer is JSON valid against the schema, and the format is echoed."""
    response = oai.responses.create(
        model="default",
        input="Give a city as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
        max_output_tokens=48,
        temperature=0,
    )
    jsonschema.validate(json.loads(response.output_text), CITY)
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_conversation_as_input_items(oai: openai.OpenAI) -> None:
    """A stateless conversation: earlier turns sent as message items, the answer's output sent back."""
    first = oai.responses.create(
        model="default", input=[{"role": "user", "content": "My name is Ada."}], max_output_tokens=12
    )
    history: list[Any] = [
        {"role": "user", "content": "My name is Ada."},
        *first.output,
        {"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ]
    second = oai.responses.create(model="default", input=history, max_output_tokens=12)
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


# Function tools: these wait on tool calling in the worker.


def _call(response: Any) -> Any:
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls, response.output
    return calls[0]


def test_named_function_call(oai: openai.OpenAI) -> None:
    """A named tool_choice: one function_call item whose arguments validate against its schema."""
    response = oai.responses.create(
        model="default", input=ASK, tools=TOOLS, tool_choice=NAMED, max_output_tokens=64, temperature=0
    )
    assert response.status == "completed"
    call = _call(response)
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert [tool.name for tool in response.tools] == ["get_weather", "add"]  # type: ignore[union-attr]


def test_required_function_call(oai: openai.OpenAI) -> None:
    """tool_choice required: one or more calls, each valid for the tool it names."""
    response = oai.responses.create(
        model="default",
        input="Add 2 and 3.",
        tools=TOOLS,
        tool_choice="required",
        max_output_tokens=96,
        temperature=0,
    )
    schemas = {tool["name"]: tool["parameters"] for tool in TOOLS}
    for item in response.output:
        if item.type == "function_call":
            jsonschema.validate(json.loads(item.arguments), schemas[item.name])
    _call(response)


def test_two_turn_function_call(oai: openai.OpenAI) -> None:
    """The call, then its output sent back with the call: the model answers in text."""
    first = oai.responses.create(
        model="default", input=ASK, tools=TOOLS, tool_choice=NAMED, max_output_tokens=64, temperature=0
    )
    call = _call(first)
    history: list[Any] = [
        {"role": "user", "content": ASK},
        *first.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees."},
    ]
    second = oai.responses.create(
        model="default",
        input=history,
        tools=TOOLS,
        tool_choice="none",
        max_output_tokens=32,
        temperature=0,
    )
    assert second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


def test_streamed_function_call_with_the_stream_helper(oai: openai.OpenAI) -> None:
    """The stream helper rebuilds the call from our argument deltas; the same call as unstreamed."""
    kwargs: Any = {
        "model": "default",
        "input": ASK,
        "tools": TOOLS,
        "tool_choice": NAMED,
        "max_output_tokens": 64,
        "temperature": 0,
    }
    with oai.responses.stream(**kwargs) as stream:
        done = [event.arguments for event in stream if event.type == "response.function_call_arguments.done"]
        final = stream.get_final_response()
    call = _call(final)
    assert done == [call.arguments]
    whole = _call(oai.responses.create(**kwargs))
    assert (whole.name, whole.arguments) == (call.name, call.arguments)


# Bad input

BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str | None]] = [
    (
        "an image part",
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}],
                }
            ]
        },
        400,
        "input",
    ),
    ("a hosted tool", {"input": "Hi", "tools": [{"type": "web_search"}]}, 400, "tools"),
    ("store true", {"input": "Hi", "store": True}, 400, "store"),
    ("a previous response", {"input": "Hi", "previous_response_id": "resp_1"}, 400, "previous_response_id"),
    ("a conversation", {"input": "Hi", "conversation": "conv_1"}, 400, "conversation"),
    ("an unknown field", {"input": "Hi", "frobnicate": True}, 400, None),
    (
        "an output for no call",
        {"input": [{"type": "function_call_output", "call_id": "x", "output": "1"}]},
        400,
        "input",
    ),
    ("too many output tokens", {"input": "Hi", "max_output_tokens": 1_000_000}, 400, "max_output_tokens"),
    ("an unknown model", {"model": "gpt-9", "input": "Hi"}, 404, "model"),
]


@pytest.mark.parametrize(
    ("case", "fields", "status", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_is_refused(
    client: httpx.Client, case: str, fields: dict[str, Any], status: int, param: str | None
) -> None:
    """Each bad request: its status in OpenAI's error shape naming the parameter; serving goes on."""
    answer = client.post("/v1/responses", json={"model": "default", "max_output_tokens": 4, **fields})
    assert answer.status_code == status, (case, answer.text)
    error = answer.json()["error"]
    assert error["param"] == param, (case, error)
    assert error["type"] == "invalid_request_error"
    again = client.post("/v1/responses", json={"model": "default", "input": "Hi", "max_output_tokens": 2})
    assert again.status_code == 200


def test_bad_input_raises_in_the_sdk(oai: openai.OpenAI) -> None:
    """The SDK raises BadRequestError with the parameter named."""
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model="default", input="Hi", tools=[{"type": "web_search"}])
    assert caught.value.param == "tools"
