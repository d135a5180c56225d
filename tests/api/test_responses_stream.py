"""The chat completion's SSE stream as the Responses API's typed events: fed at awkward byte boundaries,
several events to a chunk, tool-call deltas, the token limit, an engine error; the official SDK's event
union parses every event we produce."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec
import openai
import pydantic
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from api.openai.responses.stream import ResponseEvents, response_stream
from appliance.protocol import decode_request
from appliance.wire.responses import ResponsesRequest

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "get_weather", "description": "The weather", "parameters": WEATHER}


def _request(**fields: Any) -> ResponsesRequest:
    body = {"model": "default", "input": "Hi", "stream": True, **fields}
    return decode_request(json.dumps(body).encode(), ResponsesRequest)


def _sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "smollm2-135m",
            "choices": [choice],
            "usage": None,
        }
    )


USAGE = _sse(
    {
        "id": "c",
        "model": "smollm2-135m",
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
    }
)
DONE = b"data: [DONE]\n\n"


def _events(raw: bytes, request: ResponsesRequest | None = None, step: int = 1) -> list[dict[str, Any]]:
    """Feed `raw` in pieces of `step` bytes (so events and UTF-8 characters split) and parse what comes out:
    each event's `event:` line names its data's type, and the SDK's event union parses every one."""
    events = ResponseEvents(request or _request(), response_id="resp_s", created_at=3)
    out = b"".join(events.feed(raw[at : at + step]) for at in range(0, len(raw), step)) + events.end()
    assert b"[DONE]" not in out
    parsed: list[dict[str, Any]] = []
    for block in out.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        EVENTS.validate_python(data)
        parsed.append(data)
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    return parsed


def test_text_stream_split_at_every_byte() -> None:
    """A text stream fed one byte at a time (é and 😀 split inside) gives the typed text events in order."""
    raw = (
        _chunk({"role": "assistant", "content": ""})
        + _chunk({"content": "Hé"})
        + _chunk({"content": "llo 😀"})
        + _chunk({}, "stop")
        + USAGE
        + b": usage {}\n\n"
        + DONE
    )
    events = _events(raw)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["model"] == "smollm2-135m"
    assert (
        "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
        == "Héllo 😀"
    )
    assert events[6]["text"] == "Héllo 😀"
    final = Response.model_validate(events[-1]["response"])
    assert final.id == "resp_s"
    assert final.status == "completed"
    assert final.output_text == "Héllo 😀"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)


def test_several_events_in_one_chunk_give_the_same_events() -> None:
    """Whole stream at once, or in 5-byte pieces: the same events (ids aside)."""
    raw = _chunk({"content": "Hi"}) + _chunk({}, "stop") + USAGE + DONE

    def shape(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(event["type"], event.get("delta")) for event in events]

    assert shape(_events(raw, step=len(raw))) == shape(_events(raw, step=5))


def test_tool_call_stream() -> None:
    """Text, then two calls streamed as chat deltas (id and name first, argument fragments after):
    the message is done when the first call begins; each call has its added, deltas, done events."""
    request = _request(tools=[TOOL])
    start_a = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    start_b = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    raw = (
        _chunk({"role": "assistant", "content": None})
        + _chunk({"content": "Looking."})
        + _chunk({"tool_calls": [start_a]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})
        + _chunk({"tool_calls": [start_b]})
        + _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city":"Rome"}'}}]})
        + _chunk({}, "tool_calls")
        + USAGE
        + DONE
    )
    events = _events(raw, request, step=7)
    kinds = [event["type"] for event in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    added = [event for event in events if event["type"] == "response.output_item.added"]
    assert [(event["output_index"], event["item"]["type"]) for event in added] == [
        (0, "message"),
        (1, "function_call"),
        (2, "function_call"),
    ]
    assert added[1]["item"]["call_id"] == "call_a"
    assert added[1]["item"]["status"] == "in_progress"
    deltas = [event for event in events if event["type"] == "response.function_call_arguments.delta"]
    assert [(event["output_index"], event["item_id"]) for event in deltas] == [
        (1, added[1]["item"]["id"]),
        (1, added[1]["item"]["id"]),
        (2, added[2]["item"]["id"]),
    ]
    done = {
        event["output_index"]: event["arguments"]
        for event in events
        if event["type"] == "response.function_call_arguments.done"
    }
    assert done == {1: '{"city":"Oslo"}', 2: '{"city":"Rome"}'}
    final = Response.model_validate(events[-1]["response"])
    assert events[-1]["type"] == "response.completed"
    assert final.output_text == "Looking."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(call.call_id, call.arguments, call.status) for call in calls] == [
        ("call_a", '{"city":"Oslo"}', "completed"),
        ("call_b", '{"city":"Rome"}', "completed"),
    ]


def test_length_ends_with_response_incomplete() -> None:
    """A stream stopped at its token limit ends with response.incomplete; its message is incomplete."""
    events = _events(_chunk({"content": "Hel"}) + _chunk({}, "length") + USAGE + DONE)
    assert events[-1]["type"] == "response.incomplete"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    message = final.output[0]
    assert message.type == "message"
    assert message.status == "incomplete"


def test_error_event_becomes_response_failed() -> None:
    """An engine failure mid-stream: an `error` event, then response.failed with the text so far; nothing
    after it is read."""
    failure = {
        "error": {"message": "engine died", "type": "server_error", "param": None, "code": "engine_error"}
    }
    raw = _chunk({"content": "Hal"}) + _sse(failure) + DONE + _chunk({"content": "ignored"})
    events = _events(raw, step=3)
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert (events[-2]["message"], events[-2]["code"]) == ("engine died", "engine_error")
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "engine died")
    assert failed.output_text == "Hal"
    assert not any(event.get("delta") == "ignored" for event in events)


def test_error_as_first_event_still_starts_the_response() -> None:
    """An error before any token (a deadline, say): created and in_progress, then the failure."""
    failure = {
        "error": {"message": "too slow", "type": "server_error", "param": None, "code": "request_timeout"}
    }
    events = _events(_sse(failure) + DONE)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]


def test_a_cut_stream_fails_and_a_finished_one_completes() -> None:
    """No [DONE]: failed when the answer had not finished, completed when it had."""
    cut = _events(_chunk({"content": "Hal"}))
    assert cut[-1]["type"] == "response.failed"
    finished = _events(_chunk({"content": "Hi"}) + _chunk({}, "stop"))
    assert finished[-1]["type"] == "response.completed"


def test_empty_stream_answer_has_an_empty_message() -> None:
    """No text and no call: the message is still there, with empty text."""
    events = _events(_chunk({"role": "assistant", "content": ""}) + _chunk({}, "stop") + DONE)
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == ""
    assert [item.type for item in final.output] == ["message"]


async def test_response_stream_closes_the_chat_stream() -> None:
    """The relay stops reading after the response ends and closes the chat stream (which cancels it)."""
    closed: list[bool] = []

    async def chat() -> AsyncIterator[bytes]:
        try:
            yield _chunk({"content": "Hi"})
            yield _chunk({}, "stop") + DONE
            yield _chunk({"content": "never read"})
        finally:
            closed.append(True)

    relayed = [piece async for piece in response_stream(_request(), chat(), response_id="r", created_at=1)]
    text = b"".join(relayed)
    assert text.count(b"event: response.completed") == 1
    assert b"never read" not in text
    assert closed == [True]


def _sdk_client(chat_events: bytes) -> openai.OpenAI:
    """The official client over a transport that answers each request by translating `chat_events`,
    as the gateway would the chat stream of the request it got."""

    def answer(sent: httpx2.Request) -> httpx2.Response:
        request = decode_request(sent.content, ResponsesRequest)
        events = ResponseEvents(request, response_id="resp_sdk", created_at=1)
        body = events.feed(chat_events) + events.end()
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    transport = httpx2.MockTransport(answer)
    return openai.OpenAI(
        api_key="k",
        base_url="http://appliance/v1",
        http_client=httpx2.Client(transport=transport),
        max_retries=0,
    )


def test_the_sdk_stream_helper_rebuilds_text_and_calls() -> None:
    """client.responses.stream over our events: its accumulated text and call equal the final response,
    and the call's arguments parse into the tool's pydantic model."""

    class GetWeather(pydantic.BaseModel):
        """The weather forecast for a city."""

        city: str

    start = {
        "index": 0,
        "id": "call_w",
        "type": "function",
        "function": {"name": "GetWeather", "arguments": ""},
    }
    raw = (
        _chunk({"content": "Let me "})
        + _chunk({"content": "look."})
        + _chunk({"tool_calls": [start]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]})
        + _chunk({}, "tool_calls")
        + USAGE
        + DONE
    )
    client = _sdk_client(raw)
    with client.responses.stream(
        model="default", input="Weather in Oslo?", tools=[openai.pydantic_function_tool(GetWeather)]
    ) as stream:
        texts = [event.snapshot for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["Let me ", "Let me look."]
    assert final.output_text == "Let me look."
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.call_id == "call_w"
    assert call.parsed_arguments == GetWeather(city="Oslo")


def test_the_sdk_stream_helper_parses_structured_output() -> None:
    """client.responses.stream with text_format: the streamed JSON parses into the model."""

    class City(pydantic.BaseModel):
        """A city."""

        city: str

    raw = (
        _chunk({"content": '{"city": '}) + _chunk({"content": '"Lyon"}'}) + _chunk({}, "stop") + USAGE + DONE
    )
    with _sdk_client(raw).responses.stream(model="default", input="A city?", text_format=City) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == City(city="Lyon")
