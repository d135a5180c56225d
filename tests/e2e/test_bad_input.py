"""Each kind of bad input gets its status and OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

GOOD_CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LONG_PROMPT = "hello " * 3000  # well past the 2048-token context the e2e appliance runs with

BAD_REQUESTS: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # path, description, body (bytes or JSON), status, code, param
    (
        "/v1/chat/completions",
        "unknown model",
        {**GOOD_CHAT, "model": "gpt-9"},
        404,
        "model_not_found",
        "model",
    ),
    ("/v1/completions", "unknown model", {"model": "nope", "prompt": "x"}, 404, "model_not_found", "model"),
    ("/v1/embeddings", "unknown model", {"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
    (
        "/v1/chat/completions",
        "prompt longer than the context",
        {**GOOD_CHAT, "messages": [{"role": "user", "content": LONG_PROMPT}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "/v1/completions",
        "prompt longer than the context",
        {"model": "default", "prompt": LONG_PROMPT},
        400,
        "context_length_exceeded",
        "prompt",
    ),
    (
        "/v1/embeddings",
        "input longer than the context",
        {"model": "default", "input": LONG_PROMPT},
        400,
        "context_length_exceeded",
        "input",
    ),
    ("/v1/chat/completions", "malformed JSON", b'{"model": "default", "messages": [', 400, None, None),
    ("/v1/chat/completions", "not an object", b"[1, 2]", 400, None, None),
    ("/v1/chat/completions", "empty body", b"", 400, None, None),
    (
        "/v1/chat/completions",
        "temperature as text",
        {**GOOD_CHAT, "temperature": "hot"},
        400,
        None,
        "temperature",
    ),
    (
        "/v1/chat/completions",
        "temperature too high",
        {**GOOD_CHAT, "temperature": 7},
        400,
        None,
        "temperature",
    ),
    ("/v1/chat/completions", "negative max_tokens", {**GOOD_CHAT, "max_tokens": -1}, 400, None, "max_tokens"),
    ("/v1/chat/completions", "messages missing", {"model": "default"}, 400, None, None),
    ("/v1/chat/completions", "no messages", {**GOOD_CHAT, "messages": []}, 400, None, "messages"),
    (
        "/v1/chat/completions",
        "unknown role",
        {**GOOD_CHAT, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        None,
        "messages",
    ),
    ("/v1/chat/completions", "n over the limit of choices", {**GOOD_CHAT, "n": 9}, 400, None, "n"),
    (
        "/v1/completions",
        "prompt of wrong type",
        {"model": "default", "prompt": {"a": 1}},
        400,
        None,
        "prompt",
    ),
    ("/v1/embeddings", "empty input list", {"model": "default", "input": []}, 400, None, "input"),
    (
        "/v1/embeddings",
        "wrong encoding",
        {"model": "default", "input": "x", "encoding_format": "hex"},
        400,
        None,
        "encoding_format",
    ),
]


def _send(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json=body)


@pytest.mark.parametrize(
    ("path", "what", "body", "status", "code", "param"),
    BAD_REQUESTS,
    ids=[f"{r[0]}:{r[1]}" for r in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_error_and_the_next_request_succeeds(
    client: httpx.Client, path: str, what: str, body: Any, status: int, code: str | None, param: str | None
) -> None:
    """The error has OpenAI's shape, the right status, code and param; then a good request passes."""
    response = _send(client, path, body)
    assert response.status_code == status, (what, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert client.post("/v1/chat/completions", json=GOOD_CHAT).status_code == 200


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    """A body larger than limits.max_body_bytes is refused with 413 before anything reads it all."""
    huge = {**GOOD_CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    response = client.post("/v1/chat/completions", json=huge)
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert client.post("/v1/chat/completions", json=GOOD_CHAT).status_code == 200


def test_unknown_route_is_404_in_openai_shape(client: httpx.Client) -> None:
    """An unknown path is a 404 with OpenAI's error body, not an HTML page."""
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_errors_on_a_stream_request_keep_their_status(client: httpx.Client) -> None:
    """A streamed request that is wrong fails with a status before any event is sent."""
    # A token id outside the vocabulary: only the worker knows the vocabulary, so it refuses, not the gateway.
    wrong = {**GOOD_CHAT, "stream": True, "logit_bias": {"999999999": 1}}
    response = client.post("/v1/chat/completions", json=wrong)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logit_bias"
