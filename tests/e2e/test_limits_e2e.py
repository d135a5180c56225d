"""Limits, overload and malformed input against a real appliance: each limit at its boundary, 64 clients on
4 slots, and a corpus of broken requests, each answered in OpenAI's error shape while serving goes on."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import RunningAppliance, cli, start_appliance

SLOTS = 4
LIMITS = f"""parallel = {SLOTS}
queue_depth = 4
[limits]
max_body_bytes = 20000
max_messages = 4
max_tokens = 64
[limits.keys."tiny-body"]
max_body_bytes = 1000
[limits.keys."two-a-minute"]
requests_per_minute = 2
[limits.keys."hundred-tokens"]
tokens_per_minute = 100
max_tokens = 200
[limits.keys."hasty"]
request_timeout_s = 1.0
max_tokens = 2000
"""
GOOD = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
NO_END = {"0": -100, "2": -100}
"""SmolLM2's end tokens banned, so a generation runs until max_tokens."""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance with small limits and a key per limit under test."""
    running = start_appliance(tmp_path_factory.mktemp("limits") / "home", model_path, settings=LIMITS)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _new_key(appliance: RunningAppliance, name: str) -> dict[str, str]:
    secret = cli(appliance.home, "keys", "create", "--name", name, "--role", "user", "--quiet").strip()
    return appliance.headers(secret)


def _post(
    appliance: RunningAppliance, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{appliance.base_url}{path}", json=body, headers=headers or appliance.headers(), timeout=120
    )


def _assert_error(response: httpx.Response, status: int, error_type: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def _worker(appliance: RunningAppliance, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(appliance.worker_socket()))
    with httpx.Client(transport=transport, base_url="http://worker") as worker:
        return worker.get(path)


def _cancelled(appliance: RunningAppliance) -> int:
    found = re.search(
        r"^appliance_worker_generations_cancelled_total (\d+)", _worker(appliance, "/metrics").text, re.M
    )
    assert found
    return int(found.group(1))


def _wait_for_cancel(appliance: RunningAppliance, before: int) -> int:
    deadline = time.monotonic() + 30
    while _cancelled(appliance) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _cancelled(appliance)


def test_max_messages_at_the_limit_passes_one_more_is_400(limited: RunningAppliance) -> None:
    """4 messages pass, 5 are refused naming `messages`."""
    four = [{"role": "user", "content": "Hi"}] * 4
    assert _post(limited, "/v1/chat/completions", {**GOOD, "messages": four}).status_code == 200
    refused = _post(limited, "/v1/chat/completions", {**GOOD, "messages": [*four, four[0]]})
    _assert_error(refused, 400, "invalid_request_error", "messages")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_at_the_limit_passes_one_more_is_400(limited: RunningAppliance, param: str) -> None:
    """64 is served, 65 is refused (not clamped) naming the parameter."""
    body = {"model": "default", "messages": GOOD["messages"], param: 64}
    assert _post(limited, "/v1/chat/completions", body).status_code == 200
    _assert_error(
        _post(limited, "/v1/chat/completions", {**body, param: 65}), 400, "invalid_request_error", param
    )


def test_prompt_tokens_at_the_context_pass_one_more_is_context_length_exceeded(
    limited: RunningAppliance,
) -> None:
    """A token-id prompt one short of a slot's context is served; a full context is refused."""
    context = int(_worker(limited, "/health").json()["context_length"])
    fits = _post(
        limited, "/v1/completions", {"model": "default", "prompt": [100] * (context - 1), "max_tokens": 4}
    )
    assert fits.status_code == 200, fits.text
    assert fits.json()["usage"]["completion_tokens"] == 1  # clamped to the room the context leaves
    too_long = _post(limited, "/v1/completions", {"model": "default", "prompt": [100] * context})
    _assert_error(too_long, 400, "invalid_request_error", "prompt")
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


def _padded(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes (JSON whitespace as padding)."""
    body = json.dumps(GOOD).encode()
    return body + b" " * (size - len(body))


def test_body_at_the_limit_passes_one_byte_more_is_413(limited: RunningAppliance) -> None:
    """Both the global limit and a smaller per-key limit hold to the byte."""
    json_headers = {"Content-Type": "application/json"}
    for headers, size in ((limited.headers(), 20000), (_new_key(limited, "tiny-body"), 1000)):
        url = f"{limited.base_url}/v1/chat/completions"
        at = httpx.post(url, content=_padded(size), headers=headers | json_headers, timeout=60)
        assert at.status_code == 200, at.text
        over = httpx.post(url, content=_padded(size + 1), headers=headers | json_headers, timeout=60)
        _assert_error(over, 413, "invalid_request_error")


def test_requests_per_minute_at_the_limit_pass_one_more_is_429(limited: RunningAppliance) -> None:
    """Two requests a minute: two pass, the third is 429 rate_limit_exceeded with Retry-After."""
    headers = _new_key(limited, "two-a-minute")
    assert [_post(limited, "/v1/chat/completions", GOOD, headers).status_code for _ in range(2)] == [200, 200]
    refused = _post(limited, "/v1/chat/completions", GOOD, headers)
    _assert_error(refused, 429, "rate_limit_exceeded")
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert _post(limited, "/v1/chat/completions", GOOD).status_code == 200  # other keys are not affected


def test_tokens_per_minute_at_the_limit_pass_one_more_is_429(limited: RunningAppliance) -> None:
    """`Hi` is one estimated token: max_tokens 100 is one past a budget of 100, 99 is exactly it; the
    answer's real usage (template + 99 tokens, no end allowed) then leaves nothing for the next."""
    headers = _new_key(limited, "hundred-tokens")
    over = _post(limited, "/v1/chat/completions", {**GOOD, "max_tokens": 100}, headers)
    _assert_error(over, 429, "rate_limit_exceeded", "max_tokens")
    assert "retry-after" in over.headers
    exact = {**GOOD, "max_tokens": 99, "logit_bias": NO_END}
    assert _post(limited, "/v1/chat/completions", exact, headers).status_code == 200
    spent = _post(limited, "/v1/chat/completions", {**GOOD, "max_tokens": 50}, headers)
    _assert_error(spent, 429, "rate_limit_exceeded")
    assert int(spent.headers["retry-after"]) >= 1


def test_request_timeout_ends_a_plain_request_with_504_and_cancels_it(limited: RunningAppliance) -> None:
    """Past request_timeout_s the client gets 504 request_timeout, and the worker stops generating."""
    headers = _new_key(limited, "hasty")
    before = _cancelled(limited)
    body = {**GOOD, "max_tokens": 2000, "logit_bias": NO_END}
    response = _post(limited, "/v1/chat/completions", body, headers)
    _assert_error(response, 504, "server_error")
    assert response.json()["error"]["code"] == "request_timeout"
    assert _wait_for_cancel(limited, before) == before + 1


def test_request_timeout_ends_a_stream_with_an_error_event_and_cancels_it(limited: RunningAppliance) -> None:
    """A stream past its deadline gets an error event and [DONE], and the worker stops generating."""
    headers = _new_key(limited, "hasty")
    before = _cancelled(limited)
    body = {**GOOD, "max_tokens": 2000, "logit_bias": NO_END, "stream": True}
    with httpx.stream(
        "POST", f"{limited.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "request_timeout"
    assert _wait_for_cancel(limited, before) == before + 1


async def test_64_clients_on_4_slots_get_only_200_or_429_with_retry_after(limited: RunningAppliance) -> None:
    """Chat (streamed and not), completions and embeddings at once: nothing but 200 and 429."""
    bodies: list[tuple[str, dict[str, Any]]] = []
    for i in range(64):
        if i % 4 == 0:
            bodies.append(("/v1/completions", {"model": "default", "prompt": "Once upon", "max_tokens": 16}))
        elif i % 4 == 1:
            bodies.append(("/v1/embeddings", {"model": "default", "input": f"text {i}"}))
        else:
            bodies.append(
                ("/v1/chat/completions", {**GOOD, "max_tokens": 16, "stream": i % 4 == 3, "seed": i})
            )
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=limited.base_url, headers=limited.headers(), timeout=120, limits=limits
    ) as http:

        async def one(path: str, body: dict[str, Any]) -> httpx.Response:
            response = await http.post(path, json=body)
            await response.aread()
            return response

        responses = await asyncio.gather(*(one(path, body) for path, body in bodies))
    statuses = [r.status_code for r in responses]
    unexpected = [(r.status_code, r.text) for r in responses if r.status_code not in (200, 429)]
    assert not unexpected, unexpected
    assert statuses.count(200) >= SLOTS
    for refused in (r for r in responses if r.status_code == 429):
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    for served in (
        r for r in responses if r.status_code == 200 and r.request.url.path.endswith("completions")
    ):
        assert b"error" not in served.content
    assert _post(limited, "/v1/chat/completions", GOOD).status_code == 200


CHAT = "/v1/chat/completions"
MALFORMED: list[tuple[str, str, bytes, str, int]] = [
    # path, what, body, content type, status
    (CHAT, "messages as a string", b'{"model": "default", "messages": "Hi"}', "application/json", 400),
    (
        CHAT,
        "model as a number",
        b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}',
        "application/json",
        400,
    ),
    (CHAT, "stream as text", json.dumps({**GOOD, "stream": "yes"}).encode(), "application/json", 400),
    (
        CHAT,
        "content as a number",
        json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]}).encode(),
        "application/json",
        400,
    ),
    (CHAT, "huge max_tokens", json.dumps({**GOOD, "max_tokens": 10**30}).encode(), "application/json", 400),
    (
        CHAT,
        "huge temperature",
        b'{"model": "default", "messages": [], "temperature": 1e400}',
        "application/json",
        400,
    ),
    (CHAT, "huge top_k", json.dumps({**GOOD, "top_k": 2**62}).encode(), "application/json", 400),
    (CHAT, "huge n", json.dumps({**GOOD, "n": 10**6}).encode(), "application/json", 400),
    (CHAT, "negative max_tokens", json.dumps({**GOOD, "max_tokens": -5}).encode(), "application/json", 400),
    (CHAT, "negative top_k", json.dumps({**GOOD, "top_k": -1}).encode(), "application/json", 400),
    (CHAT, "negative top_p", json.dumps({**GOOD, "top_p": -0.5}).encode(), "application/json", 400),
    (CHAT, "unknown field", json.dumps({**GOOD, "frobnicate": True}).encode(), "application/json", 400),
    (
        CHAT,
        "unknown logit_bias token",
        json.dumps({**GOOD, "logit_bias": {"abc": 1}}).encode(),
        "application/json",
        400,
    ),
    (
        CHAT,
        "invalid UTF-8",
        b'{"model": "default", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "application/json",
        400,
    ),
    (
        CHAT,
        "lone surrogate",
        b'{"model": "default", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "application/json",
        400,
    ),
    (
        CHAT,
        "deeply nested JSON",
        b'{"model": "default", "messages": ' + b"[" * 9_000 + b"]" * 9_000 + b"}",
        "application/json",
        400,
    ),
    (CHAT, "deeply nested object", b'{"a":' * 3_000 + b"1" + b"}" * 3_000, "application/json", 400),
    (CHAT, "empty body", b"", "application/json", 400),
    (CHAT, "JSON null", b"null", "application/json", 400),
    (CHAT, "wrong content type", json.dumps(GOOD).encode(), "text/plain", 415),
    (CHAT, "form content type", b"model=default", "application/x-www-form-urlencoded", 415),
    (
        "/v1/completions",
        "prompt ids out of range",
        b'{"model": "default", "prompt": [999999999]}',
        "application/json",
        400,
    ),
    (
        "/v1/completions",
        "negative prompt id",
        b'{"model": "default", "prompt": [-1]}',
        "application/json",
        400,
    ),
    (
        "/v1/completions",
        "huge prompt id",
        b'{"model": "default", "prompt": [99999999999999999999]}',
        "application/json",
        400,
    ),
    (
        "/v1/embeddings",
        "input of numbers in text",
        b'{"model": "default", "input": [1.5]}',
        "application/json",
        400,
    ),
    (
        "/v1/embeddings",
        "unknown field",
        b'{"model": "default", "input": "x", "extra": 1}',
        "application/json",
        400,
    ),
    (
        "/v1/embeddings",
        "dimensions zero",
        b'{"model": "default", "input": "x", "dimensions": 0}',
        "application/json",
        400,
    ),
]


@pytest.mark.parametrize(
    ("path", "what", "body", "content_type", "status"), MALFORMED, ids=[m[1] for m in MALFORMED]
)
def test_malformed_request_is_4xx_in_openai_shape_and_the_next_succeeds(
    limited: RunningAppliance, path: str, what: str, body: bytes, content_type: str, status: int
) -> None:
    """Each broken request gets its 4xx with OpenAI's error body; a good request right after is served."""
    headers = limited.headers() | {"Content-Type": content_type}
    response = httpx.post(f"{limited.base_url}{path}", content=body, headers=headers, timeout=60)
    _assert_error(response, status, "invalid_request_error")
    assert _post(limited, CHAT, GOOD).status_code == 200
