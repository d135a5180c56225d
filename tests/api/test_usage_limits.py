"""The per-key prompt-token limit as the gateway passes it on, and tokens per minute corrected to the real
usage, on a fake clock."""

from __future__ import annotations

import msgspec
import pytest

from api.limits import RequestLimits
from api.ratelimit import Charge, RateLimiter
from appliance.errors import RateLimitError
from appliance.protocol import PROMPT_LIMIT_HEADER, ChatCompletionRequest, ChatMessage
from appliance.settings import LimitSettings, SettingsFile
from tests.api.fakes import FakeClock, user_key


def _chat(content: str = "abcdefgh", max_tokens: int = 8) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="default", messages=[ChatMessage(role="user", content=content)], max_tokens=max_tokens
    )


def test_max_prompt_tokens_is_per_key_and_defaults_to_no_limit() -> None:
    """`[limits.keys."name"]` sets the key's prompt limit; other keys get `[limits]` (0: none)."""
    text = b'[limits]\n[limits.keys."short"]\nmax_prompt_tokens = 40\n'
    limits = msgspec.toml.decode(text, type=SettingsFile).limits
    assert limits.max_prompt_tokens == 0
    assert limits.for_key("short").max_prompt_tokens == 40
    assert limits.for_key("other").max_prompt_tokens == 0


def test_the_worker_gets_the_keys_prompt_limit_in_a_header_and_no_header_without_one() -> None:
    """Only a key with a limit sends X-Max-Prompt-Tokens; the value is the key's own."""
    settings = msgspec.toml.decode(
        b'[limits]\n[limits.keys."short"]\nmax_prompt_tokens = 40\n', type=SettingsFile
    ).limits
    limits = RequestLimits(settings, FakeClock())
    _, short = limits.admit(user_key("short", "s"), 10, _chat())
    _, other = limits.admit(user_key("other", "o"), 10, _chat())
    assert short.worker_headers() == {PROMPT_LIMIT_HEADER: "40"}
    assert other.worker_headers() == {}


def test_a_correction_gives_back_what_the_estimate_took_too_much() -> None:
    """Estimated 100 of a budget of 100, really used 30: 70 are free again at once, 71 are not."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=100))
    limiter.correct("k", 100, charged=100, used=30)
    with pytest.raises(RateLimitError):
        limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=71))
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=70))


def test_a_correction_takes_what_the_estimate_missed_and_the_key_waits_for_it() -> None:
    """Estimated 10, really used 130 of a budget of 100: the bucket is 30 in debt, so one more token
    waits 31 tokens' refill (18.6 s at 100 per minute), and is admitted exactly then."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=10))
    limiter.correct("k", 100, charged=10, used=130)
    one = Charge(requests_per_minute=0, tokens_per_minute=100, tokens=1)
    with pytest.raises(RateLimitError) as refused:
        limiter.admit("k", one)
    assert refused.value.retry_after_s == 19  # 18.6 s, rounded up
    clock.now += 18.5
    with pytest.raises(RateLimitError):
        limiter.admit("k", one)
    clock.now += 0.1
    limiter.admit("k", one)


def test_a_correction_never_fills_past_the_capacity() -> None:
    """Time refills the bucket meanwhile; a refund on top of a full bucket stops at the capacity."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=100))
    clock.now += 60.0  # full again
    limiter.correct("k", 100, charged=100, used=0)
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=100))
    with pytest.raises(RateLimitError):
        limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=1))


def test_a_request_is_settled_once_at_its_real_usage() -> None:
    """The admission charged the estimate (2 + 8); settling at 4 real tokens frees 6, a second settle
    (another link reporting) changes nothing."""
    limits = RequestLimits(LimitSettings(tokens_per_minute=10), FakeClock())
    _, admission = limits.admit(user_key(), 10, _chat(content="abcdefgh", max_tokens=8))
    assert admission.charged == 10
    admission.settle(4)
    admission.settle(0)
    limits.admit(user_key(), 10, _chat(content="a", max_tokens=5))  # 6 tokens: exactly what was given back
    with pytest.raises(RateLimitError):
        limits.admit(user_key(), 10, _chat(content="a", max_tokens=0))


def test_a_changed_limit_ignores_the_old_charge() -> None:
    """A correction for a limit that is no longer the bucket's does nothing (the new bucket started full)."""
    limiter = RateLimiter(FakeClock())
    limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=100))
    limiter.correct("k", 50, charged=100, used=0)
    limiter.correct("unknown", 100, charged=100, used=0)
    with pytest.raises(RateLimitError):
        limiter.admit("k", Charge(requests_per_minute=0, tokens_per_minute=100, tokens=1))
