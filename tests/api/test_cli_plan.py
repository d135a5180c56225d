"""`appliance plan`: the plan for this machine's registered models, or for a described machine and models."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api.console import run_appliance
from tests.appliance.model_specs import FIXTURES
from tests.gguf_files import write_tiny_gguf

MODELS = [
    {
        "name": "llama-3.1-70b", "format": "awq", "parameters": 70_600_000_000, "quantization": "AWQ",
        "context_length": 131072, "size_bytes": 39_800_000_000, "layers": 80, "kv_heads": 8, "head_dim": 128,
    },
    {
        "name": "qwen2.5-7b", "format": "gguf", "parameters": 7_620_000_000, "quantization": "Q4_K_M",
        "context_length": 32768, "size_bytes": 4_680_000_000,
    },
]  # fmt: skip


def test_plan_for_a_described_machine_as_json(tmp_path: Path) -> None:
    """Sizing before buying: the 70B goes tensor-parallel over two A100s, the 7B GGUF to the CPU."""
    models = tmp_path / "models.json"
    models.write_text(json.dumps(MODELS))
    hardware = FIXTURES / "a100_40gb_x2.json"
    result = run_appliance("plan", "--hardware", str(hardware), "--models", str(models), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    by_name = {m["name"]: m for m in plan["models"]}
    big, small = by_name["llama-3.1-70b"], by_name["qwen2.5-7b"]
    assert (big["engine"], big["tensor_parallel_size"], big["fits"]) == ("vllm", 2, True)
    assert (small["engine"], small["threads"], small["fits"]) == ("llamacpp", 56, True)
    assert [g["name"] for g in plan["hardware"]["gpus"]] == ["NVIDIA A100-SXM4-40GB"] * 2


def test_plan_table_for_this_machine_registered_model(tmp_path: Path) -> None:
    """A registered GGUF is planned on this machine; the table names engine, fit and the reason, and the
    residency lines after it say the model fits within the budget."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    added = run_appliance("models", "add", str(model), "--name", "tiny")
    assert added.returncode == 0, added.stderr
    result = run_appliance("plan")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("MODEL "))
    header, row = lines[at : at + 2]
    assert header.split()[:3] == ["MODEL", "ENGINE", "WHERE"]
    assert row.split()[:3] == ["tiny", "llamacpp", "CPU"]  # GGUF is llama.cpp's, GPU or not
    assert " yes " in row
    assert result.stdout.startswith("CPU: ")
    assert any(line.startswith("  fit together: tiny (") for line in lines[at + 2 :]), result.stdout


def test_bad_hardware_file_is_one_error_line(tmp_path: Path) -> None:
    """A hardware description with a wrong field is one `error:` line naming the file, no traceback."""
    described = tmp_path / "box.json"
    described.write_text('{"gpus": [{"index": 0}]}')
    result = run_appliance("plan", "--hardware", str(described))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {described}: not a valid hardware description")
