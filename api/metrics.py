"""Prometheus metrics of the gateway, in a registry of its own (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from api.fallback_metrics import FallbackMetrics
from api.residency_metrics import ResidencyMetrics
from appliance.hardware import read_gpu_telemetry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


class NvmlCollector(Collector):
    """GPU utilisation, memory, temperature and power, read from NVML at each scrape."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def collect(self) -> Iterator[Metric]:
        """One gauge family per quantity, one sample per GPU (labelled by index and name)."""
        labels = ["gpu", "name"]
        families = {
            "utilization_ratio": GaugeMetricFamily(
                "appliance_gpu_utilization_ratio", "Share of time the GPU was busy", labels=labels
            ),
            "memory_used_bytes": GaugeMetricFamily(
                "appliance_gpu_memory_used_bytes", "GPU memory in use", labels=labels
            ),
            "memory_total_bytes": GaugeMetricFamily(
                "appliance_gpu_memory_total_bytes", "GPU memory installed", labels=labels
            ),
            "temperature_celsius": GaugeMetricFamily(
                "appliance_gpu_temperature_celsius", "GPU die temperature", labels=labels
            ),
            "power_watts": GaugeMetricFamily("appliance_gpu_power_watts", "GPU power draw", labels=labels),
        }
        for gpu in read_gpu_telemetry(self._nvml):
            for field, family in families.items():
                family.add_metric([str(gpu.index), gpu.name], float(getattr(gpu, field)))
        yield from families.values()


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_exposition(texts: Iterable[str]) -> bytes:
    """One Prometheus exposition from several (the gateway's and its vLLM workers'): families of the same
    name are joined, since a scraper refuses a family that appears twice."""
    merged: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merged.values()))
    return generate_latest(registry)


class GatewayMetrics:
    """Every metric the gateway exports, created once per app; GPU gauges only when NVML sees a GPU."""

    def __init__(self, nvml: Any | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if nvml is not None:
            nvml.nvmlInit()  # reference-counted by NVML; kept open for the scrapes of this gateway
            self.registry.register(NvmlCollector(nvml))
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
        self.fallback = FallbackMetrics(self.registry)
        self.residency = ResidencyMetrics(self.registry)
        """Loads and unloads of models, and the budget's use (`watch` the gateway's Residency)."""
        self.streaming_tokens = 0
        """Content events of streams still going, an estimate of their tokens: a stream's exact count
        comes with its usage at the end, when the relay moves it into `completion_tokens`."""

    def record_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count the tokens of one finished response."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)

    def render(self, worker_texts: Iterable[str] = ()) -> bytes:
        """The Prometheus text exposition of all metrics, with the workers' own metrics merged in."""
        own = generate_latest(self.registry)
        extra = list(worker_texts)
        return merge_exposition([own.decode(), *extra]) if extra else own
