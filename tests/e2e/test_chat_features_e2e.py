"""Log probabilities, n choices, the fields SDKs send, content parts and /tokenize, via `openai`."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import RunningAppliance

HELLO: Any = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def oai(appliance: RunningAppliance) -> openai.OpenAI:
    """The real OpenAI client pointed at the appliance with the user key."""
    return openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


def test_chat_logprobs(oai: openai.OpenAI) -> None:
    """One entry per generated token: the tokens spell the content, top alternatives sorted, the greedy
    token the most likely of them, probabilities that are probabilities."""
    reply = oai.chat.completions.create(
        model="default", messages=HELLO, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content
    entries = choice.logprobs.content
    assert bytes(b for entry in entries for b in entry.bytes or []).decode() == choice.message.content
    assert reply.usage is not None
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        top = [alternative.logprob for alternative in entry.top_logprobs]
        assert top == sorted(top, reverse=True)
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-5)
        assert sum(math.exp(value) for value in top) <= 1.0 + 1e-4


def test_chat_logprobs_streamed(oai: openai.OpenAI) -> None:
    """Streamed, each chunk carries the log probabilities of its tokens; together they spell the text."""
    stream = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
        stream=True,
    )
    text, spelled = "", b""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for entry in (choice.logprobs.content or []) if choice.logprobs else []:
            spelled += bytes(entry.bytes or [])
    assert text
    assert spelled.decode() == text


def test_completion_logprobs(oai: openai.OpenAI) -> None:
    """The legacy shape: parallel token, logprob, top and offset lists."""
    reply = oai.completions.create(
        model="default", prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs
    assert logprobs.top_logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert len(logprobs.top_logprobs[0]) == 2
    assert logprobs.text_offset is not None
    assert logprobs.text_offset[0] == 0


def test_n_choices(oai: openai.OpenAI) -> None:
    """n=3 greedy: three identical choices with their own index; usage counts every choice's tokens."""
    reply = oai.chat.completions.create(model="default", messages=HELLO, max_tokens=8, temperature=0, n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in reply.choices}) == 1
    single = oai.chat.completions.create(model="default", messages=HELLO, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == single.choices[0].message.content
    assert reply.usage is not None
    assert single.usage is not None
    assert reply.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens


def test_n_choices_streamed(oai: openai.OpenAI) -> None:
    """Streamed n=2 at temperature 1: chunks name their choice's index, each choice finishes once."""
    stream = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=8,
        temperature=1.0,
        seed=7,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert all(texts.values())
    assert all(len(reasons) == 1 for reasons in finishes.values())
    assert usage is not None
    assert usage.completion_tokens >= 2


SDK_FIELDS: dict[str, Any] = {
    "metadata": {"team": "reporting"},
    "store": False,
    "service_tier": "auto",
    "user": "u-42",
    "prediction": {"type": "content", "content": "Red, green, blue."},
    "reasoning_effort": "low",
    "modalities": ["text"],
    "seed": 11,
    "stop": ["\n\n", "###", "END", "Stop."],
    "parallel_tool_calls": True,
    "prompt_cache_key": "k",
    "safety_identifier": "s",
}


def test_fields_sdks_send_are_accepted(client: httpx.Client) -> None:
    """Every routinely sent field at once: 200, an answer as without them."""
    answer = client.post(
        "/v1/chat/completions", json={"model": "default", "messages": HELLO, "max_tokens": 4, **SDK_FIELDS}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


REFUSED: list[tuple[str, dict[str, Any], str | None]] = [
    (
        "an image part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ]
        },
        "messages",
    ),
    (
        "an audio part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
                }
            ]
        },
        "messages",
    ),
    (
        "a file part",
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
        "messages",
    ),
    ("audio output", {"modalities": ["text", "audio"]}, "modalities"),
    ("stored completions", {"store": True}, "store"),
    ("top_logprobs out of range", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("top_logprobs without logprobs", {"top_logprobs": 2}, "top_logprobs"),
    ("n over the limit", {"n": 9}, "n"),
    ("too many stop strings", {"stop": [str(i) for i in range(17)]}, "stop"),
    ("an unknown field", {"frobnicate": True}, None),
]


@pytest.mark.parametrize(("case", "fields", "param"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_cannot_be_honoured_is_a_400(
    client: httpx.Client, case: str, fields: dict[str, Any], param: str | None
) -> None:
    """Media the model cannot read, outputs it cannot give, limits: a 400 naming the field, never ignored."""
    answer = client.post(
        "/v1/chat/completions", json={"model": "default", "messages": HELLO, "max_tokens": 4, **fields}
    )
    assert answer.status_code == 400, (case, answer.text)
    error = answer.json()["error"]
    if param is not None:
        assert error["param"] == param, (case, error)
    else:
        assert "frobnicate" in error["message"]
    if "part" in case:
        assert "reads text only" in error["message"]


def test_tokenize_counts_what_a_chat_completion_counts(client: httpx.Client) -> None:
    """/tokenize of messages (template and tools included) gives the prompt_tokens a completion reports."""
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    for extra in ({}, {"tools": tools}):
        counted = client.post("/tokenize", json={"model": "default", "messages": HELLO, **extra})
        assert counted.status_code == 200, counted.text
        body = counted.json()
        assert body["count"] == len(body["tokens"])
        assert body["max_model_len"] > 0
        chat = client.post(
            "/v1/chat/completions", json={"model": "default", "messages": HELLO, "max_tokens": 1, **extra}
        )
        assert chat.json()["usage"]["prompt_tokens"] == body["count"]
    assert counted.headers["x-served-model"] == "smollm2-135m"


def test_tokenize_and_detokenize_a_prompt(client: httpx.Client) -> None:
    """A prompt's tokens with their texts, and back to the text."""
    counted = client.post(
        "/tokenize",
        json={
            "model": "default",
            "prompt": "Hello world",
            "add_special_tokens": False,
            "return_token_strs": True,
        },
    ).json()
    assert "".join(counted["token_strs"]) == "Hello world"
    back = client.post("/detokenize", json={"model": "default", "tokens": counted["tokens"]})
    assert back.status_code == 200
    assert back.json() == {"prompt": "Hello world"}
    bad = client.post("/detokenize", json={"model": "default", "tokens": [10**9]})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "tokens"
    neither = client.post("/tokenize", json={"model": "default"})
    assert neither.status_code == 400
    unknown = client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404
