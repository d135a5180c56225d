"""Metrics of the fallback chain: failovers, canned answers, breaker states and probe outcomes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class FallbackMetrics:
    """Counters and gauges of failover, registered on the gateway's own metrics registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failovers = Counter(
            "appliance_failovers",
            "Requests that left a link of a route for the next one, by reason",
            ["route", "model", "reason"],
            registry=registry,
        )
        self.canned_answers = Counter(
            "appliance_canned_answers",
            "Requests answered with a route's canned text",
            ["route"],
            registry=registry,
        )
        self.exhausted = Counter(
            "appliance_chain_exhausted",
            "Requests no link of their route could serve (503)",
            ["route"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "appliance_breaker_state",
            "Circuit of a link: 0 closed, 1 half-open, 2 open",
            ["model"],
            registry=registry,
        )
        self.probes = Counter(
            "appliance_probes", "Deep health probes by outcome", ["model", "outcome"], registry=registry
        )

    def set_breaker(self, model: str, state: str) -> None:
        """Export a link's breaker state."""
        self.breaker_state.labels(model).set(BREAKER_VALUES[state])

    def probe_done(self, model: str, ok: bool) -> None:
        """Count a deep probe; its outcome closes or opens the link's circuit."""
        self.probes.labels(model, "passed" if ok else "failed").inc()
        self.set_breaker(model, "closed" if ok else "open")
