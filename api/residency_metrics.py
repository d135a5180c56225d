"""Prometheus metrics of model residency: loads (how long, how many, how they ended), unloads and why, which
models are loaded, and the RAM budget's use."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.serving.residency import Residency, ResidentState

LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""A small GGUF loads in about a second on a CPU; a large vLLM model takes minutes."""


class _ResidencyGauges(Collector):
    """Read at each scrape: which enabled models are loaded, and the RAM budget against its use."""

    def __init__(self, residency: Residency) -> None:
        self._residency = residency

    def collect(self) -> Iterator[Metric]:
        """`appliance_model_loaded` per enabled model, the budget and the bytes the workers take of it."""
        loaded = GaugeMetricFamily(
            "appliance_model_loaded", "1 while the model has a loaded worker", labels=["model"]
        )
        for view in self._residency.views():
            loaded.add_metric([view.name], 1.0 if view.state is ResidentState.LOADED else 0.0)
        budget = self._residency.budget()
        yield loaded
        yield GaugeMetricFamily(
            "appliance_residency_ram_budget_bytes",
            "RAM the llama.cpp workers may take together",
            value=budget.ram_budget_bytes,
        )
        yield GaugeMetricFamily(
            "appliance_residency_ram_used_bytes",
            "RAM the loaded (and loading) llama.cpp workers take, as planned",
            value=budget.ram_used_bytes,
        )


class ResidencyMetrics:
    """Load and unload counters (the residency's recorder) and, once watching one, its gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.load_seconds = Histogram(
            "appliance_model_load_seconds",
            "From a load's start (room made included) to its worker being ready",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.loads = Counter(
            "appliance_model_loads", "Model loads by outcome", ["model", "outcome"], registry=registry
        )
        self.unloads = Counter(
            "appliance_model_unloads",
            "Model unloads by reason (idle, evicted, admin, disabled)",
            ["model", "reason"],
            registry=registry,
        )

    def watch(self, residency: Residency) -> None:
        """Export the residency's gauges from now on."""
        self._registry.register(_ResidencyGauges(residency))

    def load_done(self, model: str, seconds: float, ok: bool) -> None:
        """One load finished."""
        self.loads.labels(model, "success" if ok else "failure").inc()
        if ok:
            self.load_seconds.labels(model).observe(seconds)

    def unloaded(self, model: str, reason: str) -> None:
        """One model unloaded."""
        self.unloads.labels(model, reason).inc()
