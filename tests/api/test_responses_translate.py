"""The Responses API onto chat completions and back: the request mapping and the answer mapping, with the
official SDK's own types parsing what we produce (the stream mapping: test_responses_stream.py)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.responses import Response

from api.openai.responses.translate import chat_request, response_from_chat
from appliance.errors import InvalidRequestError
from appliance.protocol import ChatCompletionRequest, decode_request
from appliance.wire.responses import ResponsesRequest

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "get_weather", "description": "The weather", "parameters": WEATHER}


def _request(**fields: Any) -> ResponsesRequest:
    return decode_request(
        json.dumps({"model": "default", "input": "Hi", **fields}).encode(), ResponsesRequest
    )


def _chat(request: ResponsesRequest) -> ChatCompletionRequest:
    """The translated body, decoded as the gateway decodes it: the chat validation applies."""
    return decode_request(msgspec.json.encode(chat_request(request)), ChatCompletionRequest)


def _refused(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        decode_request(json.dumps({"model": "default", **body}).encode(), ResponsesRequest)
    return caught.value


# The request


def test_string_input_with_instructions_and_sampling() -> None:
    """instructions become the first system message; max_output_tokens becomes max_completion_tokens."""
    request = _request(instructions="Be brief.", max_output_tokens=20, temperature=0.5, top_p=0.9, user="u1")
    body = chat_request(request)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert body["max_completion_tokens"] == 20
    assert (body["temperature"], body["top_p"], body["user"]) == (0.5, 0.9, "u1")
    assert "stream" not in body
    chat = _chat(request)
    assert chat.token_limit == 20


def test_two_turn_function_call_history() -> None:
    """Consecutive function_call items join one assistant message (content null); each output becomes a
    tool message; an earlier answer's output items, sent back as they came, are read as input."""
    request = _request(
        tools=[TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {
                "type": "function_call",
                "id": "fc_2",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
                "status": "completed",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "Rain"}],
            },
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Sunny and rain.", "annotations": [], "logprobs": []}
                ],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks!"}]},
        ],
    )
    messages = chat_request(request)["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
        {"role": "assistant", "content": "Sunny and rain."},
        {"role": "user", "content": "Thanks!"},
    ]
    chat = _chat(request)
    assert [message.role for message in chat.messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]
    assert chat.messages[1].tool_calls is not None
    assert [call.id for call in chat.messages[1].tool_calls] == ["call_1", "call_2"]


def test_a_call_joins_the_assistant_text_before_it() -> None:
    """An answer's message then its call (both sent back) are one chat assistant turn."""
    request = _request(
        tools=[TOOL],
        input=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        ],
    )
    assistant = chat_request(request)["messages"][1]
    assert assistant["content"] == "Let me look."
    assert [call["id"] for call in assistant["tool_calls"]] == ["c1"]
    _chat(request)


def test_tools_tool_choice_and_parallel_calls() -> None:
    """Flat function tools become chat tools; a named tool_choice becomes chat's nested shape."""
    request = _request(
        tools=[{**TOOL, "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    body = chat_request(request)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather",
                "parameters": WEATHER,
                "strict": True,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert _chat(request).wants_tools
    assert chat_request(_request(tools=[TOOL], tool_choice="required"))["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {"format": {"type": "json_schema", "name": "city", "schema": WEATHER, "strict": True}},
            {"type": "json_schema", "json_schema": {"name": "city", "schema": WEATHER, "strict": True}},
        ),
    ],
)
def test_text_format_becomes_response_format(text: dict[str, Any], expected: dict[str, Any] | None) -> None:
    """text.format maps onto chat's response_format (plain text needs none)."""
    request = _request(text=text)
    assert chat_request(request).get("response_format") == expected
    _chat(request)


def test_a_stream_asks_for_the_usage_chunk() -> None:
    """The streamed chat request asks for usage, which response.completed reports."""
    body = chat_request(_request(stream=True))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert _chat(_request(stream=True)).include_usage


def test_accepted_and_ignored_fields() -> None:
    """reasoning, include, metadata, store false and truncation disabled are taken and change nothing."""
    request = _request(
        reasoning={"effort": "low"},
        include=["message.output_text.logprobs"],
        metadata={"ticket": "42"},
        store=False,
        truncation="disabled",
        text={"format": {"type": "text"}, "verbosity": "low"},
    )
    assert chat_request(request) == chat_request(_request())


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]},
            "input",
            "reads text only",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            "text only",
        ),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools", "web_search"),
        (
            {"input": "Hi", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]},
            "tools",
            "file_search",
        ),
        ({"input": "Hi", "tools": [{"type": "function", "name": "f", "oops": 1}]}, "tools", "oops"),
        ({"input": "Hi", "store": True}, "store", "stores no responses"),
        ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
        ({"input": "Hi", "conversation": "conv_1"}, "conversation", "stateless"),
        ({"input": "Hi", "background": True}, "background", "background"),
        ({"input": "Hi", "truncation": "auto"}, "truncation", "auto"),
        ({"input": "Hi", "seed": 1}, None, "seed"),
        ({"input": "Hi", "frobnicate": 1}, None, "frobnicate"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "stores nothing"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input", "reasoning"),
        ({"input": [{"role": "user", "content": "Hi", "extra": 1}]}, "input", "extra"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input", "arguments"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input", "answers no"),
        ({"input": []}, "input", "empty"),
        ({"input": "Hi", "tool_choice": {"type": "web_search_preview"}}, "tool_choice", None),
        ({"input": "Hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text", "name"),
        ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens", None),
    ],
)
def test_bad_requests_are_refused_naming_the_parameter(
    body: dict[str, Any], param: str | None, words: str | None
) -> None:
    """Each refusal is a 400 naming its parameter (an unknown field is named in the message)."""
    error = _refused(body)
    assert error.status_code == 400
    assert error.param == param
    if words is not None:
        assert words in error.message


def test_chat_checks_still_apply() -> None:
    """What the chat validation refuses (a tool_choice naming no tool) is refused here too."""
    with pytest.raises(InvalidRequestError) as caught:
        _chat(_request(tools=[TOOL], tool_choice={"type": "function", "name": "nope"}))
    assert caught.value.param == "tool_choice"


# The answer


def _chat_answer(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "smollm2-135m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "total_tokens": 17,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
        **extra,
    }


def _sdk(response: Any) -> Response:
    return Response.model_validate_json(msgspec.json.encode(response))


def test_text_answer_parses_as_the_sdk_response() -> None:
    """A text answer: one message, status completed, usage in the Responses names, output_text works."""
    request = _request(instructions="Be brief.", metadata={"k": "v"}, max_output_tokens=30)
    answer = response_from_chat(
        request, _chat_answer({"content": "Hello!"}), response_id="resp_1", created_at=7
    )
    parsed = _sdk(answer)
    assert parsed.id == "resp_1"
    assert parsed.object == "response"
    assert parsed.status == "completed"
    assert parsed.output_text == "Hello!"
    assert parsed.model == "smollm2-135m"
    message = parsed.output[0]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (12, 5, 17)
    assert parsed.usage.input_tokens_details.cached_tokens == 8
    assert parsed.usage.output_tokens_details.reasoning_tokens == 0
    assert (parsed.instructions, parsed.metadata, parsed.max_output_tokens) == ("Be brief.", {"k": "v"}, 30)
    assert parsed.error is None
    assert parsed.incomplete_details is None
    assert parsed.tool_choice == "auto"
    assert parsed.tools == []


def test_length_is_incomplete_at_max_output_tokens() -> None:
    """finish_reason length: status incomplete, reason max_output_tokens."""
    answer = response_from_chat(
        _request(), _chat_answer({"content": "Hel"}, "length"), response_id="r", created_at=1
    )
    parsed = _sdk(answer)
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output_text == "Hel"


def test_tool_calls_become_function_call_items() -> None:
    """Tool calls become function_call items with the chat call id as call_id; no empty message."""
    request = _request(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
        },
    ]
    chat = _chat_answer({"content": None, "tool_calls": calls}, "tool_calls")
    parsed = _sdk(response_from_chat(request, chat, response_id="r", created_at=1))
    assert parsed.status == "completed"
    assert [item.type for item in parsed.output] == ["function_call", "function_call"]
    first = parsed.output[0]
    assert first.type == "function_call"
    assert (first.call_id, first.name, first.arguments, first.status) == (
        "call_a",
        "get_weather",
        '{"city":"Oslo"}',
        "completed",
    )
    assert first.id is not None
    assert first.id.startswith("fc_")
    assert parsed.output_text == ""
    assert parsed.tools[0].type == "function"
    assert parsed.tool_choice.type == "function"  # type: ignore[union-attr]


def test_an_answers_output_sent_back_is_valid_input() -> None:
    """The SDK sends an earlier answer's output items back as it parsed them (set fields only): our own
    output is accepted as the next turn's input, its call answered by a function_call_output."""
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    chat = _chat_answer({"content": "Looking.", "tool_calls": calls}, "tool_calls")
    first = _sdk(response_from_chat(_request(tools=[TOOL]), chat, response_id="r", created_at=1))
    sent_back = [item.model_dump(exclude_unset=True, mode="json") for item in first.output]
    output = {"type": "function_call_output", "call_id": "call_a", "output": "Sunny"}
    request = _request(tools=[TOOL], input=[{"role": "user", "content": "Weather?"}, *sent_back, output])
    messages = [(message.role, message.text()) for message in _chat(request).messages]
    assert messages == [("user", "Weather?"), ("assistant", "Looking."), ("tool", "Sunny")]


def test_empty_answer_has_an_empty_message() -> None:
    """An empty answer still has its message, so output[0].content[0].text is ""."""
    parsed = _sdk(
        response_from_chat(_request(), _chat_answer({"content": ""}), response_id="r", created_at=1)
    )
    assert parsed.output_text == ""
    assert parsed.output[0].type == "message"


def test_echoed_json_schema_format_parses() -> None:
    """The echoed text.format json_schema is the SDK's own config (its `schema` alias included)."""
    text = {"format": {"type": "json_schema", "name": "city", "schema": WEATHER, "strict": True}}
    parsed = _sdk(
        response_from_chat(
            _request(text=text), _chat_answer({"content": "{}"}), response_id="r", created_at=1
        )
    )
    assert parsed.text is not None
    assert parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    assert parsed.text.format.schema_ == WEATHER
