"""What a Hugging Face-style AWQ model folder (config.json + safetensors) tells the planner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import ModelFileError
from appliance.planner import ModelSpec, estimate_parameters

DEFAULT_CONTEXT = 4096


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int):
            return value
    return None


def describe_awq_folder(folder: Path, name: str) -> ModelSpec:
    """The planner's view of an AWQ folder: weights size, shape and context from config.json."""
    try:
        config = msgspec.json.decode((folder / "config.json").read_bytes(), type=dict[str, Any])
    except (OSError, msgspec.DecodeError) as error:
        raise ModelFileError(f"{folder}: no readable config.json ({error})") from error
    quantization = config.get("quantization_config") or {}
    if str(quantization.get("quant_method", "")).lower() != "awq":
        raise ModelFileError(f"{folder}: config.json does not describe an AWQ model")
    size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    if size == 0:
        raise ModelFileError(f"{folder}: no .safetensors weights")
    heads = _int(config, "num_attention_heads")
    hidden = _int(config, "hidden_size")
    head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    return ModelSpec(
        name=name,
        format="awq",
        parameters=estimate_parameters(size, "AWQ"),
        quantization="AWQ",
        context_length=_int(config, "max_position_embeddings") or DEFAULT_CONTEXT,
        size_bytes=size,
        path=str(folder.resolve()),
        layers=_int(config, "num_hidden_layers"),
        kv_heads=_int(config, "num_key_value_heads") or heads,
        head_dim=head_dim,
    )
