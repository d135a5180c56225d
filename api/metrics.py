"""Prometheus metrics of the gateway, in a registry of its own (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


class GatewayMetrics:
    """Every metric the gateway exports, created once per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "appliance_requests",
            "Requests by route, status and model",
            ["route", "status", "model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "appliance_requests_in_flight", "Requests being served now", ["route"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "appliance_time_to_first_token_seconds",
            "From request to first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "appliance_time_per_output_token_seconds",
            "Decode time per output token after the first",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "appliance_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "appliance_completion_tokens", "Completion tokens generated", ["model"], registry=self.registry
        )
        self.worker_restarts = Counter(
            "appliance_worker_restarts",
            "Worker processes restarted after dying",
            ["model"],
            registry=self.registry,
        )

    def record_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count the tokens of one finished response."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition of all metrics."""
        return generate_latest(self.registry)
