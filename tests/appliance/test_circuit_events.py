"""Circuit changes told as they happen: each state a caller can see, once, in order, per link; the
gateway publishes them as `circuit.changed` for the console."""

from __future__ import annotations

from pathlib import Path

from appliance.breaker import BreakerState, CircuitBreaker
from appliance.chain import Chains
from appliance.registry.registry import open_registry
from appliance.settings import FallbackSettings, Settings
from tests.appliance.test_chain import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def test_breaker_tells_open_half_open_and_closed_once_each() -> None:
    """Failures below the threshold tell nothing; the opening, the half-open seen after the cooldown, a
    failed trial's reopening and the closing are each told once, however often the state is read."""
    clock = FakeClock()
    told: list[BreakerState] = []
    breaker = CircuitBreaker(2, 10.0, clock, on_change=told.append)
    breaker.record_failure()
    assert told == []
    breaker.record_failure()
    breaker.record_failure()  # already open: no second telling
    assert told == [OPEN]
    clock.now += 10
    assert breaker.acquire()  # the first caller after the cooldown sees half-open and takes the trial
    assert breaker.state is HALF_OPEN
    breaker.record_failure()
    assert told == [OPEN, HALF_OPEN, OPEN]
    clock.now += 10
    breaker.probe_passed()  # half-open by the clock, but nobody looked: only the closing is told
    breaker.record_success()
    assert told == [OPEN, HALF_OPEN, OPEN, CLOSED]


def test_probe_failure_opens_at_once_and_is_told() -> None:
    """A failed deep probe opens a closed circuit at once: told OPEN, then CLOSED when a probe passes."""
    told: list[BreakerState] = []
    breaker = CircuitBreaker(3, 10.0, FakeClock(), on_change=told.append)
    breaker.probe_failed()
    breaker.probe_passed()
    assert told == [OPEN, CLOSED]


def test_chains_tell_which_link_changed(tmp_path: Path) -> None:
    """Chains name the link whose circuit changed; a link's breaker made before any change tells nothing."""
    settings = Settings(home=tmp_path, fallback=FallbackSettings(failure_threshold=1))
    registry = open_registry(tmp_path / "registry.db")
    told: list[tuple[str, BreakerState]] = []
    chains = Chains(
        settings, registry, FakeClock(), on_circuit=lambda link, state: told.append((link, state))
    )
    chains.breaker("quiet")
    chains.link_failed("a")
    chains.probe_done("b", False, "no answer")
    chains.probe_done("a", True, "ok")
    assert told == [("a", OPEN), ("b", OPEN), ("a", CLOSED)]
