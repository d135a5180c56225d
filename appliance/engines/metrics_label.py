"""A worker's Prometheus text with the model it serves added as a label.

A llama.cpp worker serves one model and says so nowhere in its own /metrics (its counters are plain
`name value` lines, which the deep probe reads); the gateway merges every worker's metrics into one
exposition, where the same family from two workers must be told apart by a label.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def with_model_label(text: str, model: str) -> str:
    """`text` with `model="<model>"` on every sample (families, types and values unchanged)."""
    lines: list[str] = []
    for family in text_string_to_metric_families(text):
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = {**sample.labels, "model": model}
            rendered = ",".join(f'{key}="{_escaped(value)}"' for key, value in sorted(labels.items()))
            lines.append(f"{sample.name}{{{rendered}}} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
