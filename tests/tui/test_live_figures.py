"""Issue 18: the overview showed output tok/s `0.0` under load and TTFT p50 `100` in every capture.

Two expositions of the gateway's own metrics, as /metrics wrote them two seconds apart under a streaming load,
go through the overview's figures and the console's history: tokens/s is the rise over the two seconds, and
the TTFT median is that of the first tokens in between, interpolated inside its bucket.
"""

from __future__ import annotations

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from api.admin.console import histogram_p50, live_figures, sample_totals
from api.openai.relay import content_events
from tui.history import MetricsHistory, histogram_quantile
from tui.schemas import Overview

TTFT = "appliance_time_to_first_token_seconds"
BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0")


def exposition(requests: int, tokens: int, ttft: tuple[int, ...], ttft_sum: float) -> str:
    """The gateway's text for `requests`, `tokens` and TTFT cumulative bucket counts (one per bound)."""
    model = 'model="smollm2-135m"'
    lines = [
        "# HELP appliance_requests_total Requests by route, status and model",
        "# TYPE appliance_requests_total counter",
        f'appliance_requests_total{{{model},route="/v1/chat/completions",status="200"}} {requests}.0',
        "# HELP appliance_requests_in_flight Requests being served now",
        "# TYPE appliance_requests_in_flight gauge",
        'appliance_requests_in_flight{route="/v1/chat/completions"} 2.0',
        f"# HELP {TTFT} From request to first generated token",
        f"# TYPE {TTFT} histogram",
        *(f'{TTFT}_bucket{{le="{b}",{model}}} {c}.0' for b, c in zip(BOUNDS, ttft, strict=True)),
        f'{TTFT}_bucket{{le="+Inf",{model}}} {ttft[-1]}.0',
        f"{TTFT}_count{{{model}}} {ttft[-1]}.0",
        f"{TTFT}_sum{{{model}}} {ttft_sum}",
        "# HELP appliance_completion_tokens_total Completion tokens generated",
        "# TYPE appliance_completion_tokens_total counter",
        f"appliance_completion_tokens_total{{{model}}} {tokens}.0",
    ]
    return "\n".join(lines) + "\n"


# Captured shape: 4 first tokens at t=0 (one each in 0.05, 0.1, 0.25, 0.5), 4 more in (0.1, 0.25] by t=2 s.
AT_0 = exposition(4, 400, (0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4), 0.62)
AT_2 = exposition(8, 1000, (0, 0, 0, 1, 2, 7, 8, 8, 8, 8, 8, 8, 8), 1.40)


def overview_of(text: str, streaming_tokens: int = 0) -> Overview:
    """The overview's live figures for one exposition, as the console decodes them."""
    totals = sample_totals(text_string_to_metric_families(text))
    figures = msgspec.json.encode(live_figures(totals, streaming_tokens))
    return msgspec.json.decode(figures, type=Overview)


def test_two_captures_make_a_token_rate_and_an_interpolated_median() -> None:
    """600 tokens in 2 s: 300 tok/s; the window's 4 first tokens all in (0.1, 0.25]: median 175 ms."""
    history = MetricsHistory()
    history.add(overview_of(AT_0), now=10.0)
    history.add(overview_of(AT_2), now=12.0)
    assert list(history.requests_per_s) == [2.0]
    assert list(history.tokens_per_s) == [300.0]
    assert list(history.ttft_p50_ms) == [175.0]  # the bucket's 100 or 250 was what the screen showed


def test_the_median_since_start_is_interpolated_not_a_bucket_bound() -> None:
    """At t=2: 8 samples, rank 4 lies in (0.1, 0.25] holding 5 (2 below): 0.1 + 0.15 * 2/5 = 0.16 s."""
    totals = sample_totals(text_string_to_metric_families(AT_2))
    median = histogram_p50(totals, TTFT)
    assert median is not None
    assert abs(median - 0.16) < 1e-9
    figures = overview_of(AT_2)
    assert figures.ttft_count == 8
    assert figures.ttft_buckets[5] == (0.25, 7.0)


def test_tokens_of_streams_still_going_count_at_once() -> None:
    """No stream finished between the polls (the counter stayed), but 90 tokens went out: 45 tok/s."""
    history = MetricsHistory()
    history.add(overview_of(AT_0, streaming_tokens=10), now=10.0)
    history.add(overview_of(AT_0, streaming_tokens=100), now=12.0)
    assert list(history.tokens_per_s) == [45.0]
    # A quiet interval (no first token) keeps the last median instead of dropping to 0.
    assert list(history.ttft_p50_ms) == [0.0]
    history.add(overview_of(AT_2), now=14.0)
    history.add(overview_of(AT_2), now=15.0)
    assert list(history.ttft_p50_ms)[-2:] == [175.0, 175.0]


def test_quantile_edges() -> None:
    """Empty: None; everything past the last finite bound: that bound; the first bucket from 0."""
    assert histogram_quantile([(0.1, 0.0), (1.0, 0.0)], 0.0, 0.5) is None
    assert histogram_quantile([(0.1, 0.0), (1.0, 0.0)], 3.0, 0.5) == 1.0
    assert histogram_quantile([(0.1, 4.0), (1.0, 4.0)], 4.0, 0.5) == 0.05


def test_content_events_count_tokens_not_role_or_finish_events() -> None:
    """A stream's role event (empty content) and finish event carry no token; each content delta one."""
    events = (
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"Once"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":" upon \\"content\\":\\"x"}}]}\n\n'
        b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n'
    )
    assert content_events(events) == 2
