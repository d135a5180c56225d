"""What a Hugging Face-style AWQ model folder (config.json + safetensors) tells the planner."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import ModelFileError
from appliance.planner import ModelSpec, estimate_parameters
from appliance.safe_files import FileTooLargeError, read_small_file

DEFAULT_CONTEXT = 4096
MAX_CONFIG_BYTES = 1024 * 1024
"""config.json is a few kilobytes; a larger one is no model's, and is not read into memory."""
MAX_TOKENIZER_CONFIG_BYTES = 16 * 1024 * 1024
"""tokenizer_config.json carries the chat template and added tokens: over a megabyte for some models."""


def read_config(folder: Path, name: str, limit: int) -> dict[str, Any] | None:
    """A JSON object file of the folder, read by safe_files' rules and at most `limit` bytes; None when
    it is missing or no JSON object (a file that is too large, a link or a FIFO raises instead)."""
    root = Path(os.path.realpath(folder))
    try:
        data = read_small_file(folder / name, limit, within=root)
    except FileTooLargeError:
        raise
    except ModelFileError:  # missing or unreadable: the caller says what the folder lacks
        return None
    try:
        return msgspec.json.decode(data, type=dict[str, Any])
    except (msgspec.DecodeError, RecursionError):  # msgspec refuses deep nesting with RecursionError
        return None


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int):
            return value
    return None


def describe_awq_folder(folder: Path, name: str) -> ModelSpec:
    """The planner's view of an AWQ folder: weights size, shape and context from config.json."""
    config = read_config(folder, "config.json", MAX_CONFIG_BYTES)
    if config is None:
        raise ModelFileError(f"{folder}: no readable config.json")
    quantization = config.get("quantization_config") or {}
    if str(quantization.get("quant_method", "")).lower() != "awq":
        raise ModelFileError(f"{folder}: config.json does not describe an AWQ model")
    # lstat, regular files only: a link is no weights of this folder (an import refuses it anyway).
    size = sum(st.st_size for st in map(os.lstat, folder.glob("*.safetensors")) if stat.S_ISREG(st.st_mode))
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
