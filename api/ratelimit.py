"""Per-key token buckets for requests and tokens per minute, in memory, on an injectable monotonic clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import RateLimitError

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled continuously at `capacity` per minute; a take either fits or waits."""

    capacity: float
    level: float
    updated_at: float

    def refill(self, now: float) -> None:
        """Add what a minute's rate gives for the time since the last refill, up to the capacity."""
        self.level = min(self.capacity, self.level + (now - self.updated_at) * self.capacity / 60.0)
        self.updated_at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is now); call after `refill`."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass(frozen=True)
class Charge:
    """What one request costs: itself, and its estimated tokens."""

    requests_per_minute: int
    tokens_per_minute: int
    tokens: int


class RateLimiter:
    """Buckets by key id and kind; a request is admitted only if every bucket it uses has room, so a
    refused request takes nothing. Single event loop, no awaits inside: no lock needed."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, key_id: str, kind: str, capacity: int, now: float) -> TokenBucket:
        bucket = self._buckets.get((key_id, kind))
        if bucket is None or bucket.capacity != capacity:
            # A new key, or its limit changed: start full, as a fresh minute would.
            bucket = TokenBucket(capacity=float(capacity), level=float(capacity), updated_at=now)
            self._buckets[(key_id, kind)] = bucket
        bucket.refill(now)
        return bucket

    def admit(self, key_id: str, charge: Charge) -> None:
        """Take one request and `charge.tokens` from the key's buckets, or raise RateLimitError (429)."""
        now = self._clock()
        wanted: list[tuple[TokenBucket, float]] = []
        if charge.requests_per_minute > 0:
            wanted.append((self._bucket(key_id, "requests", charge.requests_per_minute, now), 1.0))
        if charge.tokens_per_minute > 0:
            if charge.tokens > charge.tokens_per_minute:
                raise RateLimitError(
                    f"This request is estimated at {charge.tokens} tokens, more than this key's limit of "
                    f"{charge.tokens_per_minute} tokens per minute; lower max_tokens or the prompt.",
                    retry_after_s=60,
                    param="max_tokens",
                )
            wanted.append((self._bucket(key_id, "tokens", charge.tokens_per_minute, now), charge.tokens))
        wait = max((bucket.wait_for(amount) for bucket, amount in wanted), default=0.0)
        if wait > 0:
            raise RateLimitError(
                f"Rate limit reached for this key ({charge.requests_per_minute or 'unlimited'} requests, "
                f"{charge.tokens_per_minute or 'unlimited'} tokens per minute); retry after "
                f"{math.ceil(wait)} s.",
                retry_after_s=max(1, math.ceil(wait)),
            )
        for bucket, amount in wanted:
            bucket.level -= amount

    def correct(self, key_id: str, tokens_per_minute: int, charged: int, used: int) -> None:
        """Give back (or take more of) the key's tokens once a request's real usage is known: the bucket
        ends as if `used` had been taken instead of the estimate `charged`. It may go below zero, so a
        request that used more than estimated delays the next ones instead of being forgotten."""
        bucket = self._buckets.get((key_id, "tokens"))
        if tokens_per_minute <= 0 or bucket is None or bucket.capacity != tokens_per_minute:
            return  # unlimited, or the limit changed since admission: the new bucket started afresh
        bucket.refill(self._clock())
        bucket.level = min(bucket.capacity, bucket.level + charged - used)
