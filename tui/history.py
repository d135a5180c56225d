"""Rates for the overview's sparklines, computed from successive polls of the gateway's counters."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tui.schemas import Overview

POINTS = 60


def histogram_quantile(buckets: Sequence[tuple[float, float]], count: float, q: float) -> float | None:
    """The q-quantile of a histogram (cumulative counts at finite upper bounds, `count` in all), linearly
    interpolated inside its bucket as Prometheus's `histogram_quantile` does; None when it is empty.
    Beyond the last finite bound, that bound is the answer (nothing more is known)."""
    if count <= 0:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def _delta(now: Overview, then: Overview) -> tuple[list[tuple[float, float]], float] | None:
    """The histogram of what arrived between two polls; None when the bounds differ or it went down."""
    bounds = [b for b, _ in now.ttft_buckets]
    if bounds != [b for b, _ in then.ttft_buckets] or now.ttft_count < then.ttft_count:
        return None
    counts = [c - p for (_, c), (_, p) in zip(now.ttft_buckets, then.ttft_buckets, strict=True)]
    return list(zip(bounds, counts, strict=True)), now.ttft_count - then.ttft_count


@dataclass
class MetricsHistory:
    """The last POINTS values of requests/s, output tokens/s and TTFT p50 (ms)."""

    requests_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    tokens_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    ttft_p50_ms: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    _last: tuple[float, Overview] | None = None

    def add(self, overview: Overview, now: float) -> None:
        """Add one poll taken at `now` (monotonic seconds); the first poll only sets the baseline."""
        last, self._last = self._last, (now, overview)
        if last is None or now <= last[0]:
            return
        elapsed, before = now - last[0], last[1]
        # A counter that went down means the gateway restarted: count from zero rather than go negative.
        self.requests_per_s.append(max(0.0, overview.requests_total - before.requests_total) / elapsed)
        tokens = overview.completion_tokens_total - before.completion_tokens_total
        self.tokens_per_s.append(max(0.0, tokens) / elapsed)
        self.ttft_p50_ms.append(self._ttft_ms(overview, before))

    def _ttft_ms(self, overview: Overview, before: Overview) -> float:
        """The median TTFT of the first tokens since the last poll; with none, the last point stays (a
        quiet second has no TTFT); from a gateway without buckets, its median since start."""
        if overview.ttft_buckets:
            window = _delta(overview, before)
            if window is not None:
                median = histogram_quantile(window[0], window[1], 0.5)
                if median is not None:
                    return median * 1000
            return self.ttft_p50_ms[-1] if self.ttft_p50_ms else 0.0
        return (overview.ttft_p50_s or 0.0) * 1000

    @classmethod
    def fixed(cls, requests: list[float], tokens: list[float], ttft_ms: list[float]) -> MetricsHistory:
        """A history with given points, for snapshots that must not drift."""
        history = cls()
        history.requests_per_s.extend(requests)
        history.tokens_per_s.extend(tokens)
        history.ttft_p50_ms.extend(ttft_ms)
        return history
