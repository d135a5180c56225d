"""The loaded model as the worker's routes see it: tokenizer, chat template, context size, cores."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from appliance.engines.llamacpp.batching import BatchingCore
from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.engines.llamacpp.core import GenerationCore
from appliance.engines.llamacpp.native import ContextShape, NativeContext, NativeModel
from appliance.engines.llamacpp.priority import apply_compute_priority
from appliance.engines.llamacpp.schema_grammar import GrammarThread
from appliance.engines.llamacpp.sizing import default_parallel, own_streams, pool_size
from appliance.errors import (
    ContextLengthExceededError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
)
from appliance.settings import ComputePriority, SchemaLimits

BATCH_TOKENS = 512
"""Tokens per decode call: every running sequence's next token plus chunks of pending prompts."""
DEFAULT_SCHEMA_LIMITS = SchemaLimits()
EMBEDDING_CONTEXT = 4096
"""Most tokens one embedding input may have."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the supervisor tells a worker on its command line."""

    model_path: Path
    name: str
    context_length: int
    """Tokens one request may use (prompt and completion); 0 or more than trained: the trained context."""
    threads: int
    chat_template_override: str | None = None
    parallel: int = 0
    queue_depth: int = 64
    stream_interval: int = 0
    compute_priority: ComputePriority = "normal"
    """The appliance's settings choose "idle" (see priority.py); a library user keeps its own threads' way."""
    kv_pool_tokens: int = 0
    """Cells of the KV pool all slots share (the planner's figure); 0: every slot's full context."""
    schema_limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS
    """Bounds on the JSON Schemas requests turn into grammars (`[limits.schema]`)."""
    lock_in_memory: bool = False
    """Lock the weights in RAM (decrypted weights from the store: never swapped out; see memlock.py)."""


class Embedder:
    """A second llama.cpp context in embedding mode, loaded on first use, on its own thread.

    It shares the model file's mapped pages with the generating context, and running on its own thread means
    an embedding request never waits behind a long generation. A request's inputs are decoded a batch at a
    time (as many as fill one decode, as llama-cpp-python batches them), and a cancelled request stops at the
    next batch: a client that hangs up on 2,048 inputs does not keep the thread, and every later embedding
    request, busy for the rest of them.
    """

    def __init__(self, config: WorkerConfig, context_length: int) -> None:
        self._config = config
        self.context_length = min(context_length, EMBEDDING_CONTEXT)
        """Tokens one input may have: the whole input is one micro-batch, whose compute buffer grows with
        its square, so it is capped apart from generation's context."""
        self._llm: Any = None
        self._closing = threading.Event()
        self.inputs_embedded = 0
        """Inputs embedded so far (counted per batch, by the embedding thread)."""
        self.cancelled = 0
        """Requests stopped before their last batch because their client left."""
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="embeddings",
            initializer=apply_compute_priority,
            initargs=(config.compute_priority,),
        )

    def _load(self) -> Any:
        if self._llm is None:
            self._llm = llama_cpp.Llama(  # no mlock of its own: it maps the pages NativeModel locked
                str(self._config.model_path),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=self.context_length,
                n_batch=self.context_length,
                n_ubatch=self.context_length,
                n_threads=self._config.threads,
                verbose=False,
            )
        return self._llm

    def _batches(self, llm: Any, texts: list[str]) -> list[list[str]]:
        """`texts` in the groups that llama-cpp-python's embed would decode together; an input longer than
        the embedding context is a 400 before anything is decoded."""
        most_inputs = int(llm.context_params.n_seq_max)
        batches: list[list[str]] = []
        used = 0
        for index, text in enumerate(texts):
            tokens = len(llm.tokenize(text.encode("utf-8")))  # as embed() tokenizes, BOS included
            if tokens > self.context_length:
                raise ContextLengthExceededError(
                    f"input[{index}] is longer than the model's context of {self.context_length} tokens",
                    param="input",
                )
            if not batches or used + tokens > self.context_length or len(batches[-1]) >= most_inputs:
                batches.append([])
                used = 0
            batches[-1].append(text)
            used += tokens
        return batches

    def _embed(self, texts: list[str], stop: threading.Event) -> tuple[list[list[float]], int] | None:
        """The vectors and token count of `texts`, or None once `stop` (or closing) is set."""
        llm = self._load()
        vectors: list[list[float]] = []
        tokens = 0
        for batch in self._batches(llm, texts):
            if stop.is_set() or self._closing.is_set():
                self.cancelled += 1
                return None
            found, count = llm.embed(batch, normalize=True, truncate=False, return_count=True)
            vectors += found
            tokens += count
            self.inputs_embedded += len(batch)
        return vectors, tokens

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised vectors of `texts` and the number of tokens they took; cancelling the
        call stops the work at the next batch."""
        stop = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._embed, texts, stop)
        try:
            done = await job
        except asyncio.CancelledError:
            stop.set()
            raise
        if done is None:
            raise EngineUnavailableError("The worker is shutting down; retry shortly.")
        return done

    def close(self) -> None:
        """Stop the embedding thread (a request under way stops at its next batch)."""
        self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


class LoadedModel:
    """Everything the routes need about the one model this worker serves."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.native = NativeModel(config.model_path, lock_in_memory=config.lock_in_memory)
        trained = self.native.trained_context
        self.context_length = min(config.context_length or trained, trained)
        parallel = config.parallel or default_parallel(config.threads)
        pool = pool_size(self.context_length, parallel, config.kv_pool_tokens)
        streams = own_streams(pool, self.context_length, parallel)
        shape = ContextShape(pool, parallel, BATCH_TOKENS, config.threads, own_streams=streams)
        context = NativeContext(self.native, shape)
        self.parallel = parallel
        template = config.chat_template_override or self.native.chat_template()
        self.chat_template = ChatTemplate(
            template,
            bos_token=self._token_text(self.native.bos),
            eos_token=self._token_text(self.native.eos),
        )
        self.batching = BatchingCore(
            self.native,
            context,
            self.context_length,
            parallel,
            config.queue_depth,
            config.stream_interval,
            config.compute_priority,
        )
        self.core: GenerationCore = self.batching
        self.embedder = Embedder(config, self.context_length)
        self.grammars = GrammarThread()

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self.native.token_text(token, special=True).decode("utf-8", "replace")

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens`, special tokens written out; safe off the scheduler thread (own buffer)."""
        ids = (llama_cpp.llama_token * len(tokens))(*tokens)
        capacity = 8 * len(tokens) + 16
        for _ in range(2):
            buffer = ctypes.create_string_buffer(capacity)
            size = llama_cpp.llama_detokenize(
                self.native.vocab, ids, len(tokens), buffer, capacity, False, True
            )
            if size >= 0:
                return buffer.raw[:size].decode("utf-8", "replace")
            capacity = -size  # too small: llama.cpp says how much it needs
        raise EngineError("llama.cpp could not detokenize these tokens")

    def token_text(self, token: int) -> str:
        """One token's text, special tokens written out (for /tokenize's token_strs)."""
        return self.detokenize([token])

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a prompt exactly as llama-cpp-python's own completion path makes them."""
        bos = [self.native.bos] if self.native.adds_bos else []
        return bos + self.native.tokenize(text, add_bos=False)

    def check_fits(self, prompt_tokens: list[int], max_tokens: int | None, param: str) -> int:
        """The number of tokens the completion may use; a prompt that leaves no room is a 400."""
        room = self.context_length - len(prompt_tokens)
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.context_length} tokens. However, your "
                f"{param} resulted in {len(prompt_tokens)} tokens. Please reduce the length of the {param}.",
                param=param,
            )
        return room if max_tokens is None else min(max_tokens, room)

    def check_tokens(self, tokens: list[int], param: str) -> None:
        """Token ids from a request (prompt ids, logit_bias keys) must exist in the vocabulary."""
        if any(not 0 <= token < self.native.n_vocab for token in tokens):
            raise InvalidRequestError(f"{param} names a token id outside the vocabulary", param=param)

    def close(self) -> None:
        """Stop generation, embedding and grammar threads and free the model."""
        self.grammars.close()
        self.embedder.close()
        self.core.close()
