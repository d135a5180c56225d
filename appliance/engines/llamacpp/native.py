"""The GGUF model and its decoding context through llama.cpp's C API (llama-cpp-python's low-level layer).

Only the scheduler thread touches the context; tokenizing only reads the vocabulary, which llama.cpp's
own server also does from its HTTP threads.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from numpy.typing import NDArray

from appliance.errors import EngineError, ModelFileError

PIECE_BUFFER = 256
"""Bytes for one token's text; llama.cpp's longest pieces are far shorter."""

# llama.cpp logs every load step at INFO through llama-cpp-python's logger; errors are all we want.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ContextShape:
    """How the decoding context is sized: the pool's cells, the slots sharing them, tokens per decode call,
    and whether each slot has a stream of its own (`pool_tokens` // `parallel` cells each)."""

    pool_tokens: int
    parallel: int
    batch_tokens: int
    threads: int
    own_streams: bool = False


class NativeModel:
    """A loaded GGUF model: vocabulary, tokenizer, token texts and its embedded chat template."""

    def __init__(self, path: Path, *, lock_in_memory: bool = False) -> None:
        params = llama_cpp.llama_model_default_params()
        if lock_in_memory:  # the mapping and any weights copied out of it stay in RAM (memlock.py)
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK
        self.model: Any = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ModelFileError(f"{path}: llama.cpp could not load this model")
        self.vocab: Any = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.trained_context = int(llama_cpp.llama_model_n_ctx_train(self.model))
        # A sliding-window model drops old cells as a sequence moves on, so another sequence's cells may
        # no longer hold a whole prefix: those models never share cells between sequences.
        self.can_share_cells = int(llama_cpp.llama_model_n_swa(self.model)) == 0
        self._piece = ctypes.create_string_buffer(PIECE_BUFFER)

    def chat_template(self) -> str | None:
        """The template stored in the GGUF header, if any."""
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """Tokens of `text`, special tokens parsed (chat templates write them as text)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_bos, True)
        if count < 0:  # the buffer was too small; llama.cpp says how many it needs
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_bos, True)
        return list(tokens[:count])

    def token_text(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character). Scheduler thread only."""
        size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, PIECE_BUFFER, 0, special)
        return self._piece.raw[: max(size, 0)]

    def is_end_of_generation(self, token: int) -> bool:
        """EOS, end-of-turn and the other tokens after which a model has finished."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        """Free the model's memory."""
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class NativeContext:
    """A decoding context for `parallel` sequences (one per slot), in one of two layouts.

    Shared pool: a sequence takes cells as it grows, up to the per-request limit the model sets, and
    sequences that share a prefix share its cells (llama.cpp's unified KV cache, llama-server's default).
    Own streams: each sequence has a stream of `pool_tokens // parallel` cells and attends only over it
    (llama-server's `-np` without `--kv-unified`); a shared prefix is copied between streams.
    """

    def __init__(self, model: NativeModel, shape: ContextShape) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.pool_tokens
        params.n_batch = shape.batch_tokens
        # One micro-batch per decode: a decode that finds no room then changes nothing (llama.cpp undoes
        # only the micro-batch that failed), so the scheduler can free cells and try again.
        params.n_ubatch = shape.batch_tokens
        params.n_seq_max = shape.parallel
        params.n_threads = shape.threads
        params.n_threads_batch = shape.threads
        params.kv_unified = not shape.own_streams
        params.no_perf = True
        self.ctx: Any = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context of this size")
        self.memory: Any = llama_cpp.llama_get_memory(self.ctx)
        self.pool_tokens = int(llama_cpp.llama_n_ctx(self.ctx))
        self.own_streams = shape.own_streams
        self.n_vocab = model.n_vocab
        self.batch = llama_cpp.llama_batch_init(shape.batch_tokens, 0, 1)
        self.batch_capacity = shape.batch_tokens

    def set_threads(self, threads: int) -> None:
        """Compute the next decodes with `threads` threads (call between decodes, on the decoding thread)."""
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)

    def logits(self, rows: int) -> NDArray[np.float32]:
        """The logits of the last decode's `rows` outputs, in batch order, as a view (no copy)."""
        pointer = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(rows, self.n_vocab))

    def forget(self, seq: int, from_position: int = 0) -> bool:
        """Drop a sequence's cells from `from_position` on; False if the model cannot cut partially."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, from_position, -1))

    def share(self, source: int, target: int, length: int) -> None:
        """Make `target` hold the first `length` cells of `source`.

        In the shared pool the cells are not copied, they gain a second owner (and stay until neither
        sequence holds them). Between own streams llama.cpp copies the whole stream (a plain memory copy
        at the start of the next decode, far cheaper than recomputing a prefix) and the copy is cut.
        """
        llama_cpp.llama_memory_seq_rm(self.memory, target, 0, -1)
        if self.own_streams:
            llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, target, length, -1)
        else:
            llama_cpp.llama_memory_seq_cp(self.memory, source, target, 0, length)

    def close(self) -> None:
        """Free the batch and the context."""
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
