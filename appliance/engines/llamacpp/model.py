"""The loaded model as the worker's routes see it: tokenizer, chat template, context size, cores."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.engines.llamacpp.core import GenerationCore, SequentialCore
from appliance.errors import ContextLengthExceededError


@dataclass(frozen=True)
class WorkerConfig:
    """What the supervisor tells a worker on its command line."""

    model_path: Path
    name: str
    context_length: int
    threads: int
    chat_template_override: str | None = None
    parallel: int = 0
    queue_depth: int = 64


class Embedder:
    """A second llama.cpp context in embedding mode, loaded on first use, on its own thread.

    It shares the model file's mapped pages with the generating context, and running on its own thread means
    an embedding request never waits behind a long generation.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")

    def _load(self) -> Any:
        if self._llm is None:
            self._llm = llama_cpp.Llama(
                str(self._config.model_path),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=self._config.context_length,
                n_batch=self._config.context_length,
                n_ubatch=self._config.context_length,
                n_threads=self._config.threads,
                verbose=False,
            )
        return self._llm

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors, tokens = self._load().embed(texts, normalize=True, truncate=False, return_count=True)
        return vectors, tokens

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised vectors of `texts` and the number of tokens they took."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, texts)

    def close(self) -> None:
        """Stop the embedding thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class LoadedModel:
    """Everything the routes need about the one model this worker serves."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._llm = llama_cpp.Llama(
            str(config.model_path),
            n_ctx=config.context_length,
            n_threads=config.threads,
            n_threads_batch=config.threads,
            verbose=False,
        )
        template = config.chat_template_override or self._llm.metadata.get("tokenizer.chat_template")
        self.chat_template = ChatTemplate(
            template,
            bos_token=self._token_text(self._llm.token_bos()),
            eos_token=self._token_text(self._llm.token_eos()),
        )
        self.core: GenerationCore = SequentialCore(self._llm)
        self.embedder = Embedder(config)

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    @property
    def context_length(self) -> int:
        """Tokens that fit in one sequence."""
        return int(self._llm.n_ctx())

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a prompt exactly as llama-cpp-python's own completion path makes them."""
        bos = [self._llm.token_bos()] if self._llm._model.add_bos_token() else []
        return bos + list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

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

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes (for the embeddings' context check)."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def close(self) -> None:
        """Stop generation and embedding threads."""
        self.core.close()
        self.embedder.close()
