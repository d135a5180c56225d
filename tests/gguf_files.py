"""Small GGUF files made with the `gguf` package, for tests that need a valid header quickly."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_gguf(path: Path, context_length: int = 256, rows: int = 4) -> Path:
    """A valid llama-architecture GGUF with one F16 tensor of `rows` x 8 zeros and no chat template."""
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_context_length(context_length)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tensor("token_embd.weight", np.zeros((rows, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
