"""Request limits at their boundaries: settings per key, token buckets on a fake clock, the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar import Response
from litestar.response import Stream

from api.limits import RequestLimits
from api.ratelimit import Charge, RateLimiter
from appliance.errors import (
    InvalidRequestError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    SettingsError,
)
from appliance.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest
from appliance.settings import KeyLimitSettings, LimitSettings, SettingsFile, load_settings
from tests.api.fakes import FakeClock, user_key


def _chat(
    messages: int = 1,
    content: str = "Hi",
    max_tokens: int | None = None,
    max_completion_tokens: int | None = None,
) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="default",
        messages=[ChatMessage(role="user", content=content) for _ in range(messages)],
        max_tokens=max_tokens,
        max_completion_tokens=max_completion_tokens,
    )


def test_key_overrides_fall_back_to_the_defaults() -> None:
    """`[limits.keys."name"]` overrides only what it sets; other keys get `[limits]`."""
    text = b'[limits]\nmax_tokens = 100\n[limits.keys."batch jobs"]\nrequests_per_minute = 5\n'
    limits = msgspec.toml.decode(text, type=SettingsFile).limits
    assert limits.for_key("batch jobs").requests_per_minute == 5
    assert limits.for_key("batch jobs").max_tokens == 100
    assert limits.for_key("someone else").requests_per_minute == 0


def test_largest_body_is_the_largest_over_all_keys() -> None:
    """The HTTP layer lets through the largest body any key may send; the per-key check does the rest."""
    limits = LimitSettings(max_body_bytes=10, keys={"big": KeyLimitSettings(max_body_bytes=50)})
    assert limits.largest_body_bytes == 50
    assert LimitSettings(max_body_bytes=10).largest_body_bytes == 10


def test_unknown_key_in_a_key_table_is_a_settings_error(tmp_path: Path) -> None:
    """A typo in a per-key table is refused at start with the key's path."""
    home = tmp_path
    (home / "settings.toml").write_text('[limits.keys."a"]\nrequests_per_min = 5\n')
    with pytest.raises(SettingsError, match="requests_per_min"):
        load_settings(home)


def test_requests_per_minute_at_the_limit_pass_one_more_is_429() -> None:
    """A bucket of N admits N at once; the next gets 429 with Retry-After until a token refills."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    charge = Charge(requests_per_minute=3, tokens_per_minute=0, tokens=10)
    for _ in range(3):
        limiter.admit("k1", charge)
    with pytest.raises(RateLimitError) as refused:
        limiter.admit("k1", charge)
    assert refused.value.status_code == 429
    assert refused.value.error_type == "rate_limit_exceeded"
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after_s == 20  # one request refills in 60 / 3 s
    clock.now += 19.9
    with pytest.raises(RateLimitError):
        limiter.admit("k1", charge)
    clock.now += 0.1
    limiter.admit("k1", charge)


def test_buckets_are_per_key() -> None:
    """One key using up its budget does not touch another's."""
    limiter = RateLimiter(FakeClock())
    charge = Charge(requests_per_minute=1, tokens_per_minute=0, tokens=1)
    limiter.admit("a", charge)
    limiter.admit("b", charge)
    with pytest.raises(RateLimitError):
        limiter.admit("a", charge)


def test_tokens_per_minute_boundary_and_refused_requests_take_nothing() -> None:
    """Exactly the budget passes; one token more is 429; a refused request leaves the buckets as they were."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit("k", Charge(requests_per_minute=10, tokens_per_minute=100, tokens=60))
    with pytest.raises(RateLimitError) as refused:
        limiter.admit("k", Charge(requests_per_minute=10, tokens_per_minute=100, tokens=41))
    assert refused.value.retry_after_s == 1  # 1 token at 100 per minute: 0.6 s, rounded up
    limiter.admit("k", Charge(requests_per_minute=10, tokens_per_minute=100, tokens=40))


def test_a_request_larger_than_the_whole_budget_is_429_with_a_clear_reason() -> None:
    """It could never fit, so the message says so rather than inviting a retry loop."""
    limiter = RateLimiter(FakeClock())
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=100))
    with pytest.raises(RateLimitError, match="more than this key's limit"):
        limiter.admit("k2", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=101))


def test_zero_means_unlimited() -> None:
    """Defaults (0) never refuse."""
    limiter = RateLimiter(FakeClock())
    for _ in range(1000):
        limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=0, tokens=10**6))


def test_max_messages_boundary() -> None:
    """At max_messages passes; one more is 400 with param messages."""
    limits = RequestLimits(LimitSettings(max_messages=3))
    limits.admit(user_key(), 10, _chat(messages=3))
    with pytest.raises(InvalidRequestError) as refused:
        limits.admit(user_key(), 10, _chat(messages=4))
    assert refused.value.param == "messages"


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_refused_past_the_limit_not_clamped(param: str) -> None:
    """At the limit passes unchanged; one more is 400 naming the parameter."""

    def asking(tokens: int) -> ChatCompletionRequest:
        if param == "max_tokens":
            return _chat(max_tokens=tokens)
        return _chat(max_completion_tokens=tokens)

    limits = RequestLimits(LimitSettings(max_tokens=64))
    assert limits.admit(user_key(), 10, asking(64))[0].token_limit == 64
    with pytest.raises(InvalidRequestError) as refused:
        limits.admit(user_key(), 10, asking(65))
    assert refused.value.param == param
    assert refused.value.status_code == 400


def test_a_chat_without_max_tokens_gets_the_limit_and_completions_keep_their_16() -> None:
    """The limit becomes the default for chat; the legacy completions default stays 16."""
    limits = RequestLimits(LimitSettings(max_tokens=64))
    assert limits.admit(user_key(), 10, _chat())[0].max_tokens == 64
    completion, _ = limits.admit(user_key(), 10, CompletionRequest(model="m", prompt="x"))
    assert completion.token_limit == 16


def test_body_size_boundary_per_key() -> None:
    """A key with a smaller body limit gets 413 one byte past it; other keys do not."""
    limits = RequestLimits(
        LimitSettings(max_body_bytes=1000, keys={"tiny": KeyLimitSettings(max_body_bytes=100)})
    )
    limits.admit(user_key("tiny"), 100, _chat())
    with pytest.raises(RequestTooLargeError) as refused:
        limits.admit(user_key("tiny"), 101, _chat())
    assert refused.value.status_code == 413
    limits.admit(user_key("other"), 1000, _chat())


def test_tokens_per_minute_charge_is_prompt_estimate_plus_max_tokens() -> None:
    """8 characters are 2 tokens, plus max_tokens 8: a budget of 10 admits exactly one such request."""
    clock = FakeClock()
    limits = RequestLimits(LimitSettings(tokens_per_minute=10), clock)
    limits.admit(user_key(), 10, _chat(content="abcdefgh", max_tokens=8))
    with pytest.raises(RateLimitError):
        limits.admit(user_key(), 10, _chat(content="a", max_tokens=1))
    embeddings = RequestLimits(LimitSettings(tokens_per_minute=3), clock)
    embeddings.admit(user_key(), 10, EmbeddingRequest(model="m", input=[[1, 2], "abcd"]))
    with pytest.raises(RateLimitError):
        embeddings.admit(user_key(), 10, EmbeddingRequest(model="m", input="a"))


async def test_a_slow_answer_past_the_deadline_is_504_and_cancelled() -> None:
    """The engine call is cancelled (which closes the worker connection) and the client gets 504."""
    limits = RequestLimits(LimitSettings(request_timeout_s=0.05))
    cancelled = asyncio.Event()

    async def slow() -> Response[bytes]:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(b"{}")

    with pytest.raises(RequestTimeoutError) as refused:
        await limits.within_deadline(user_key(), slow())
    assert refused.value.status_code == 504
    assert cancelled.is_set()


async def test_a_stream_past_the_deadline_ends_with_an_error_event_and_closes_upstream() -> None:
    """Events before the deadline pass; then one error event and [DONE]; the worker stream is closed."""
    limits = RequestLimits(LimitSettings(request_timeout_s=0.2))
    closed = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(60)
            yield b"data: 2\n\n"
        finally:
            closed.set()

    async def answer() -> Stream:
        return Stream(events(), media_type="text/event-stream")

    stream = await limits.within_deadline(user_key(), answer())
    assert isinstance(stream, Stream)
    assert isinstance(stream.iterator, AsyncIterator)
    received = [chunk async for chunk in stream.iterator if isinstance(chunk, bytes)]
    assert received[0] == b"data: 1\n\n"
    error = msgspec.json.decode(received[1].split(b"\n\n")[0].removeprefix(b"data: "))
    assert error["error"]["code"] == "request_timeout"
    assert received[1].endswith(b"data: [DONE]\n\n")
    assert closed.is_set()


async def test_an_answer_within_the_deadline_is_untouched() -> None:
    """A fast answer comes back as it was."""
    limits = RequestLimits(LimitSettings(request_timeout_s=5))

    async def fast() -> Response[bytes]:
        return Response(b'{"ok": true}')

    response = await limits.within_deadline(user_key(), fast())
    assert response.content == b'{"ok": true}'
