"""Tiny AWQ-shaped model folders for tests (vLLM is not installed here: nothing loads them for real)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

WEIGHTS = bytes(range(256)) * 3 + b"canary-weights-0123456789abcdef"


def write_awq_folder(folder: Path) -> Path:
    """A tiny folder shaped like a Hugging Face AWQ model: config, safetensors weights, tokenizer files."""
    folder.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 2048,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }
    (folder / "config.json").write_text(json.dumps(config))
    # safetensors: an 8-byte little-endian header length, the JSON header, then the raw tensor bytes.
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(WEIGHTS)], "data_offsets": [0, len(WEIGHTS)]}})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + WEIGHTS)
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return folder
