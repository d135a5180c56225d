"""The registry's facts about an AWQ model folder, read from its config.json and tokenizer_config.json."""

from __future__ import annotations

from pathlib import Path

from appliance.engines.vllm.model_folder import (
    MAX_CONFIG_BYTES,
    MAX_TOKENIZER_CONFIG_BYTES,
    describe_awq_folder,
    read_config,
)
from appliance.gguf_info import GgufInfo


def awq_folder_facts(folder: Path, name: str, sha256: str) -> GgufInfo:
    """What `ModelRegistry.add_awq_folder` records; ModelFileError when the folder is not an AWQ model."""
    spec = describe_awq_folder(folder, name)  # also refuses a folder that is not AWQ or has no weights
    config = read_config(folder, "config.json", MAX_CONFIG_BYTES) or {}
    architectures = config.get("architectures")
    architecture = (
        str(architectures[0])
        if isinstance(architectures, list) and architectures
        else str(config.get("model_type", "unknown"))
    )
    tokenizer = read_config(folder, "tokenizer_config.json", MAX_TOKENIZER_CONFIG_BYTES) or {}
    template = tokenizer.get("chat_template")
    return GgufInfo(
        architecture=architecture,
        context_length=spec.context_length,
        quantization=spec.quantization,
        chat_template=template if isinstance(template, str) else None,
        size_bytes=spec.size_bytes,
        sha256=sha256,
        display_name=name,
    )
