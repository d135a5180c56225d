"""What the planner tests plan: described machines (JSON fixtures) and real models' sizes and shapes."""

from __future__ import annotations

from pathlib import Path

import msgspec

from appliance.hardware import Hardware
from appliance.planner import ModelSpec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hardware"


def machine(name: str) -> Hardware:
    """A described machine from its JSON fixture, decoded exactly as `appliance plan --hardware` does."""
    return msgspec.json.decode((FIXTURES / f"{name}.json").read_bytes(), type=Hardware)


def awq_70b(name: str = "llama-3.1-70b") -> ModelSpec:
    """Llama-3.1-70B-Instruct AWQ INT4: 39.8 GB of weights; 80 layers, 8 KV heads of 128."""
    return ModelSpec(
        name=name, format="awq", parameters=70_600_000_000, quantization="AWQ", context_length=131072,
        size_bytes=39_800_000_000, path="/models/llama-3.1-70b-awq", layers=80, kv_heads=8, head_dim=128,
    )  # fmt: skip


def awq_7b(name: str = "qwen2.5-7b") -> ModelSpec:
    """Qwen2.5-7B-Instruct AWQ: 5.58 GB of weights; 28 layers, 4 KV heads of 128."""
    return ModelSpec(
        name=name, format="awq", parameters=7_620_000_000, quantization="AWQ", context_length=32768,
        size_bytes=5_580_000_000, path="/models/qwen2.5-7b-awq", layers=28, kv_heads=4, head_dim=128,
    )  # fmt: skip


def gguf_7b(name: str = "qwen2.5-7b") -> ModelSpec:
    """Qwen2.5-7B-Instruct Q4_K_M GGUF (4.68 GB), its shape left to the planner's estimate."""
    return ModelSpec(
        name=name, format="gguf", parameters=7_620_000_000, quantization="Q4_K_M", context_length=32768,
        size_bytes=4_680_000_000, path="/models/qwen2.5-7b-q4_k_m.gguf",
    )  # fmt: skip
