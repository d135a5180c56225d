"""How `appliance models ps` and the console word a model's residency and the budget, and SSE read back."""

from __future__ import annotations

from appliance.wire.residency import (
    GIB,
    ResidencyBudget,
    ResidentModel,
    budget_line,
    budget_short,
    idle_text,
    shown_state,
    span,
    until_text,
)
from appliance.wire.sse import SseEvent, SseReader, sse_comment, sse_event


def _model(**fields: object) -> ResidentModel:
    base: dict[str, object] = {"name": "m", "state": "loaded"}
    return ResidentModel(**(base | fields))  # type: ignore[arg-type]


def test_until_says_pinned_busy_or_when() -> None:
    """Pinned wins over busy; busy while requests run or while loading; else the expiry, ollama-like."""
    assert until_text(_model(pinned=True, in_flight=2)) == "pinned"
    assert until_text(_model(in_flight=1, expires_in_s=None)) == "busy"
    assert until_text(_model(state="loading")) == "busy"
    assert until_text(_model(expires_in_s=241.0)) == "4 minutes from now"
    assert until_text(_model(expires_in_s=1.0)) == "1 second from now"
    assert until_text(_model(expires_in_s=0.2)) == "now"
    assert until_text(_model(state="cold", expires_in_s=None)) == "-"


def test_state_idle_and_spans() -> None:
    """A loaded model with nothing in flight reads idle; spans use the largest whole unit."""
    assert shown_state(_model(in_flight=0)) == "idle"
    assert shown_state(_model(in_flight=1)) == "loaded"
    assert shown_state(_model(state="failed")) == "failed"
    assert idle_text(_model(idle_s=None)) == "-"
    assert idle_text(_model(idle_s=7200.0)) == "2 hours"
    assert span(59.4) == "59 seconds"
    assert span(60) == "1 minute"


def test_budget_lines() -> None:
    """The ps budget line and the console's short figure carry the same numbers; GPUs say who holds them."""
    budget = ResidencyBudget(
        ram_budget_bytes=4 * GIB, ram_used_bytes=int(1.2 * GIB), max_loaded=2, loaded=1, gpus=()
    )
    assert budget_line(budget) == "RAM budget 1.2 of 4.0 GiB; 1 of max 2 loaded"
    assert budget_short(budget) == "RAM 1.2/4.0 GiB, 1/2 loaded"
    held = ResidencyBudget(
        ram_budget_bytes=4 * GIB, ram_used_bytes=0, max_loaded=3, loaded=1, gpus=(("GPU 0", "qwen"),)
    )
    assert budget_line(held).endswith("; GPU 0 holds qwen")


def test_sse_written_then_read_back() -> None:
    """What the gateway writes, a reader gives back; comments are skipped, multi-line data joined, and
    the last id stays the stream's last event id (as the SSE spec keeps it) until another comes."""
    written = sse_comment("subscribed") + sse_event("model.loaded", 7, b'{"model":"a"}')
    written += b"data: one\ndata: two\n\n"
    reader = SseReader()
    events = [e for line in written.decode().split("\n") if (e := reader.feed(line)) is not None]
    assert events == [SseEvent("model.loaded", "7", '{"model":"a"}'), SseEvent("message", "7", "one\ntwo")]


def test_no_max_loaded_reads_as_no_limit() -> None:
    """max_loaded 0 is no limit but memory, said so rather than `of max 0`."""
    budget = ResidencyBudget(ram_budget_bytes=4 * GIB, ram_used_bytes=0, max_loaded=0, loaded=2)
    assert budget_line(budget) == "RAM budget 0.0 of 4.0 GiB; 2 (no limit but memory) loaded"
    assert budget_short(budget) == "RAM 0.0/4.0 GiB, 2 loaded"
