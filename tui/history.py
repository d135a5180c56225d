"""Rates for the overview's sparklines, computed from successive polls of the gateway's counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tui.schemas import Overview

POINTS = 60


@dataclass
class MetricsHistory:
    """The last POINTS values of requests/s, output tokens/s and TTFT p50 (ms)."""

    requests_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    tokens_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    ttft_p50_ms: deque[float] = field(default_factory=lambda: deque(maxlen=POINTS))
    _last: tuple[float, float, float] | None = None

    def add(self, overview: Overview, now: float) -> None:
        """Add one poll taken at `now` (monotonic seconds); the first poll only sets the baseline."""
        current = (now, overview.requests_total, overview.completion_tokens_total)
        last, self._last = self._last, current
        if last is None or now <= last[0]:
            return
        elapsed = now - last[0]
        # A counter that went down means the gateway restarted: count from zero rather than go negative.
        self.requests_per_s.append(max(0.0, current[1] - last[1]) / elapsed)
        self.tokens_per_s.append(max(0.0, current[2] - last[2]) / elapsed)
        self.ttft_p50_ms.append((overview.ttft_p50_s or 0.0) * 1000)

    @classmethod
    def fixed(cls, requests: list[float], tokens: list[float], ttft_ms: list[float]) -> MetricsHistory:
        """A history with given points, for snapshots that must not drift."""
        history = cls()
        history.requests_per_s.extend(requests)
        history.tokens_per_s.extend(tokens)
        history.ttft_p50_ms.extend(ttft_ms)
        return history
