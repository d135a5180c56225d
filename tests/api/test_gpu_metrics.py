"""GPU gauges from NVML in /metrics, and vLLM workers' metrics merged into the gateway's exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from api.metrics import GatewayMetrics, merge_exposition
from tests.appliance.fake_nvml import FakeNvml, h100

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{name}"}} {value}
"""


def _gpu_values(metrics: GatewayMetrics) -> dict[str, float]:
    """Each appliance_gpu_* sample of GPU 0, by family name, parsed from one scrape."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if family.name.startswith("appliance_gpu_"):
                assert sample.labels == {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
                found[family.name] = sample.value
    return found


def test_gpu_gauges_are_read_at_scrape_time() -> None:
    """Each scrape reads NVML again: a GPU that got busier shows it in the next scrape."""
    gpu = h100(free_mib=41559, utilization_percent=10, temperature_c=50, power_mw=300_000)
    nvml = FakeNvml([gpu])
    metrics = GatewayMetrics(nvml)
    assert nvml.init_calls == 1
    assert _gpu_values(metrics) == {
        "appliance_gpu_utilization_ratio": 0.1,
        "appliance_gpu_memory_used_bytes": 40000 * 2**20,
        "appliance_gpu_memory_total_bytes": 81559 * 2**20,
        "appliance_gpu_temperature_celsius": 50.0,
        "appliance_gpu_power_watts": 300.0,
    }
    gpu.utilization_percent = 95
    assert _gpu_values(metrics)["appliance_gpu_utilization_ratio"] == 0.95


def test_no_gpu_means_no_gpu_metrics() -> None:
    """Without NVML the gateway exports no appliance_gpu_* family at all."""
    assert "appliance_gpu_" not in GatewayMetrics().render().decode()


def test_a_failing_nvml_read_gives_a_scrape_without_gpu_samples() -> None:
    """NVML raising during a scrape (a GPU off the bus) leaves the families empty, not a 500."""
    metrics = GatewayMetrics(FakeNvml([h100()], failing=frozenset({"nvmlDeviceGetCount"})))
    text = metrics.render().decode()
    assert "# TYPE appliance_gpu_power_watts gauge" in text
    assert "appliance_gpu_power_watts{" not in text


def test_worker_metrics_are_merged_into_one_family_each() -> None:
    """Two vLLM workers report the same family; the merged exposition has it once with both samples."""
    metrics = GatewayMetrics()
    metrics.requests.labels("/v1/chat/completions", "200", "a").inc()
    text = metrics.render([VLLM_TEXT.format(name="a", value=2), VLLM_TEXT.format(name="b", value=5)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    running = families["vllm:num_requests_running"]
    assert sorted((s.labels["model_name"], s.value) for s in running.samples) == [("a", 2.0), ("b", 5.0)]
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    assert families["appliance_requests"].samples[0].value == 1.0
    assert merge_exposition([VLLM_TEXT.format(name="a", value=1)]).decode().count("# HELP") == 1
