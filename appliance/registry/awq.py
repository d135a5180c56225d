"""The registry's facts about an AWQ model folder, read from its config.json and tokenizer_config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from appliance.engines.vllm.model_folder import describe_awq_folder
from appliance.gguf_info import GgufInfo


def _json(path: Path) -> dict[str, Any]:
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, Any])
    except (OSError, msgspec.DecodeError):
        return {}


def awq_folder_facts(folder: Path, name: str, sha256: str) -> GgufInfo:
    """What `ModelRegistry.add_awq_folder` records; ModelFileError when the folder is not an AWQ model."""
    spec = describe_awq_folder(folder, name)  # also refuses a folder that is not AWQ or has no weights
    config = _json(folder / "config.json")
    architectures = config.get("architectures")
    architecture = (
        str(architectures[0])
        if isinstance(architectures, list) and architectures
        else str(config.get("model_type", "unknown"))
    )
    template = _json(folder / "tokenizer_config.json").get("chat_template")
    return GgufInfo(
        architecture=architecture,
        context_length=spec.context_length,
        quantization=spec.quantization,
        chat_template=template if isinstance(template, str) else None,
        size_bytes=spec.size_bytes,
        sha256=sha256,
        display_name=name,
    )
