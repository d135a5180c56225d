"""llama-cpp-python's own greedy output on a model file: what the appliance's answers are compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llama_cpp

CONTEXT_LENGTH = 2048
"""What tests/e2e/server.py configures the appliance's workers with."""


def reference_llama(model_path: Path) -> Any:
    """llama-cpp-python's `Llama` on the file, shaped like the worker's context; the caller closes it."""
    # flash_attn as the worker has it (llama.cpp picks flash attention by default; llama-cpp-python does not)
    return llama_cpp.Llama(str(model_path), n_ctx=CONTEXT_LENGTH, n_threads=2, verbose=False, flash_attn=True)


def greedy_completion(model_path: Path, prompt: str, max_tokens: int) -> str:
    """llama-cpp-python's own greedy completion of `prompt` from the plain file."""
    llm = reference_llama(model_path)
    try:
        done: Any = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0)
        return str(done["choices"][0]["text"])
    finally:
        llm.close()
