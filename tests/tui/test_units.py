"""The console's pure parts: rates from counters, the audit filter, the TTFT median, version rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.admin.console import histogram_p50
from tests.tui.fixed import AUDIT, OVERVIEW, VERSIONS
from tui.audit_filter import AuditFilter, parse_since
from tui.history import MetricsHistory
from tui.schemas import Hardware, Overview
from tui.screens.overview import hardware_text
from tui.screens.versions import version_row

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_rates_come_from_counter_deltas() -> None:
    """Two polls two seconds apart with 4 more requests make 2 requests/s; a reset counts from zero."""
    history = MetricsHistory()
    history.add(Overview(requests_total=10, completion_tokens_total=100), now=100.0)
    assert list(history.requests_per_s) == []
    history.add(Overview(requests_total=14, completion_tokens_total=160, ttft_p50_s=0.25), now=102.0)
    history.add(Overview(requests_total=1, completion_tokens_total=0), now=103.0)
    assert list(history.requests_per_s) == [2.0, 0.0]
    assert list(history.tokens_per_s) == [30.0, 0.0]
    assert list(history.ttft_p50_ms) == [250.0, 0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("15m", datetime(2026, 1, 31, 11, 45, tzinfo=UTC)),
        ("2h", datetime(2026, 1, 31, 10, 0, tzinfo=UTC)),
        ("1d", datetime(2026, 1, 30, 12, 0, tzinfo=UTC)),
        ("2026-01-30", datetime(2026, 1, 30, tzinfo=UTC)),
    ],
)
def test_since_accepts_relative_and_iso_times(text: str, expected: datetime | None) -> None:
    """Relative times count back from now; ISO times without an offset are UTC."""
    assert parse_since(text, NOW) == expected


def test_since_refuses_nonsense() -> None:
    """An unreadable time is a ValueError the screen reports, not a crash."""
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_since("yesterday", NOW)


def test_filter_by_actor_action_and_time() -> None:
    """Each criterion narrows the events; together they combine."""
    assert [e.id for e in AuditFilter(action="KEYS").apply(AUDIT)] == [2, 1]
    # A key id finds what the key did (2, as actor) and the row that created it (1, as target).
    assert [e.id for e in AuditFilter(actor="a1b2").apply(AUDIT)] == [2, 1]
    assert [e.id for e in AuditFilter(actor="0f9e8d").apply(AUDIT)] == [2]  # created by a1b2...: target
    assert [e.id for e in AuditFilter(actor="chat/completions").apply(AUDIT)] == [3]  # a request path
    assert [e.id for e in AuditFilter(since=parse_since("2026-01-31", NOW)).apply(AUDIT)] == [3]
    assert AuditFilter(actor="a1b2", action="auth").apply(AUDIT) == []
    assert AuditFilter(actor="f6 0f").apply(AUDIT) == []  # no match across two fields
    assert [e.id for e in AuditFilter(actor="192.0.2").apply(AUDIT)] == [3]  # the client's address


def test_ttft_median_is_interpolated_in_the_bucket_holding_half() -> None:
    """Cumulative buckets 1, 3, 4 of 4: rank 2 lies halfway through (0.05, 0.1]; no samples, no median."""
    name = "appliance_time_to_first_token_seconds"
    totals: dict[str, float] = {
        f"{name}_bucket{{le={b}}}": c for b, c in (("0.05", 1), ("0.1", 3), ("+Inf", 4))
    }
    assert histogram_p50(totals, name) == pytest.approx(0.075)
    assert histogram_p50({}, name) is None


def test_a_gpu_line_shows_memory_used_of_total_and_utilisation() -> None:
    """With NVML figures from the poll, the GPU line has memory used/total and utilisation."""
    assert hardware_text(OVERVIEW.hardware, OVERVIEW.gpu_usage).splitlines()[1] == (
        "GPU0 NVIDIA H100 80GB HBM3  mem 39.6/79.6 GiB  util 45%"
    )
    # A poll whose NVML read failed still lists the GPU the gateway detected at start.
    assert (
        hardware_text(OVERVIEW.hardware).splitlines()[1] == "GPU0 NVIDIA H100 80GB HBM3, 79.6 GiB, 40.0 free"
    )


def test_without_a_gpu_the_overview_says_so_and_why() -> None:
    """No GPU: one line that says none, with the gateway's reason."""
    hardware = Hardware(gpu_note="no NVIDIA GPU: nvidia-ml-py (pynvml) is not installed")
    assert hardware_text(hardware).splitlines()[1] == (
        "GPU  none (no NVIDIA GPU: nvidia-ml-py (pynvml) is not installed)"
    )


def test_version_rows_mark_the_serving_one_and_show_utc_dates() -> None:
    """`*` marks the active version, as `appliance models versions` does; registration time is UTC."""
    assert [version_row(v) for v in VERSIONS[:2]] == [
        ("", "1", "Q4_1", "98.0", "ab12ab12ab12", "2026-01-30 10:00"),
        ("*", "2", "Q4_1", "98.0", "cd34cd34cd34", "2026-01-31 10:00"),
    ]
