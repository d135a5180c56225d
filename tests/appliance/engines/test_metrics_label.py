"""The gateway labels each llama.cpp worker's plain counters with its model before merging them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from api.metrics import merge_exposition
from appliance.engines.metrics_label import with_model_label

WORKER_TEXT = "appliance_worker_kv_pool_cells {cells}\nappliance_worker_decode_steps_total {steps}\n"


def test_two_workers_become_one_family_each_told_apart_by_model() -> None:
    """The same family from two workers, once in the merged text, one sample per model, values kept."""
    first = with_model_label(WORKER_TEXT.format(cells=65536, steps=12), "smollm2-135m")
    second = with_model_label(WORKER_TEXT.format(cells=4096, steps=0), 'odd"name')
    merged = merge_exposition([first, second]).decode()
    families = {family.name: family for family in text_string_to_metric_families(merged)}
    pool = families["appliance_worker_kv_pool_cells"]
    assert sorted((s.labels["model"], s.value) for s in pool.samples) == [
        ('odd"name', 4096.0),
        ("smollm2-135m", 65536.0),
    ]
    assert merged.count("appliance_worker_kv_pool_cells{") == 2
    assert 'appliance_worker_kv_pool_cells{model="smollm2-135m"} 65536' in first
