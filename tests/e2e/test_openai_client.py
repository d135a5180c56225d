"""The official `openai` client, unchanged, against a running `appliance serve`."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.server import RunningAppliance


@pytest.fixture
def oai(appliance: RunningAppliance) -> openai.OpenAI:
    """The real OpenAI client pointed at the appliance with the user key."""
    return openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


def test_chat_non_stream(oai: openai.OpenAI) -> None:
    """A chat completion comes back whole, with usage and the served model's name."""
    reply = oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
    )
    assert reply.model == "smollm2-135m"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    """A streamed chat yields the role first, content deltas, a finish reason, then a usage chunk."""
    stream = oai.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 16
    assert len({c.id for c in chunks}) == 1


def test_chat_content_as_text_parts(oai: openai.OpenAI) -> None:
    """Message content given as a list of text parts is accepted."""
    reply = oai.chat.completions.create(
        model="default",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}
        ],
        max_completion_tokens=4,
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 4


def test_completions(oai: openai.OpenAI) -> None:
    """The legacy completions route returns text and usage; the stream ends with a finish reason."""
    reply = oai.completions.create(
        model="default", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 8
    pieces = list(oai.completions.create(model="default", prompt="One, two,", max_tokens=6, stream=True))
    assert pieces[-1].choices[0].finish_reason in {"stop", "length"}
    assert "".join(p.choices[0].text for p in pieces)


def test_embeddings(oai: openai.OpenAI) -> None:
    """Embeddings come back normalised, one per input, in float and in the client's default base64."""
    as_floats = oai.embeddings.create(model="default", input=["a cat", "a dog"], encoding_format="float")
    assert [d.index for d in as_floats.data] == [0, 1]
    width = len(as_floats.data[0].embedding)
    assert width == 576
    assert abs(sum(x * x for x in as_floats.data[0].embedding) - 1.0) < 1e-3
    as_base64 = oai.embeddings.create(model="default", input="a cat")
    assert as_base64.data[0].embedding == pytest.approx(as_floats.data[0].embedding, abs=1e-5)
    assert as_floats.usage.prompt_tokens > 0


def test_models(oai: openai.OpenAI) -> None:
    """Models list every name and alias; retrieving one works; an unknown one is a 404."""
    ids = {m.id for m in oai.models.list()}
    assert {"smollm2-135m", "default"} <= ids
    assert oai.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_metrics_count_requests_tokens_and_latency(appliance: RunningAppliance, oai: openai.OpenAI) -> None:
    """After a streamed chat, /metrics shows its request, its tokens, TTFT and time per output token."""
    list(
        oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    text = httpx.get(f"{appliance.base_url}/metrics", headers=appliance.headers()).text
    assert 'appliance_requests_total{model="smollm2-135m",route="/v1/chat/completions",status="200"}' in text
    assert 'appliance_time_to_first_token_seconds_count{model="smollm2-135m"}' in text
    assert 'appliance_time_per_output_token_seconds_count{model="smollm2-135m"}' in text
    assert 'appliance_completion_tokens_total{model="smollm2-135m"}' in text
    assert 'appliance_prompt_tokens_total{model="smollm2-135m"}' in text
    assert "appliance_requests_in_flight" in text


def test_request_id_is_echoed_or_made(appliance: RunningAppliance) -> None:
    """A caller's sane x-request-id comes back; otherwise each response gets a fresh one."""
    echoed = httpx.get(
        f"{appliance.base_url}/v1/models", headers={**appliance.headers(), "x-request-id": "trace-42"}
    )
    assert echoed.headers["x-request-id"] == "trace-42"
    first = httpx.get(f"{appliance.base_url}/health/live").headers["x-request-id"]
    second = httpx.get(f"{appliance.base_url}/health/live").headers["x-request-id"]
    assert first != second


def test_json_schema_response_format(oai: openai.OpenAI) -> None:
    """response_format json_schema: the reply parses and has the required fields of the right types."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=80,
        temperature=0,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_repeated_prefix_reports_cached_tokens(oai: openai.OpenAI) -> None:
    """A second request sharing a long system prompt reports cached prompt tokens in usage."""
    system = "You answer questions about geography, briefly and precisely. " * 20
    for question in ("Where is Lima?", "Where is Oslo?"):
        reply = oai.chat.completions.create(
            model="default",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=4,
        )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens is not None
    assert reply.usage.prompt_tokens_details.cached_tokens > 200
