"""The generation core's interface: submit a job, read its text as it comes, leave to cancel it.

The worker's HTTP side depends only on this; `batching.BatchingCore` implements it with one llama.cpp
context that decodes every running sequence in the same batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; the defaults are OpenAI's (temperature 1, top_p 1)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    """llama.cpp's default; OpenAI's API has no top_k."""
    min_p: float = 0.05
    """llama.cpp's default; OpenAI's API has no min_p."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None
    """GBNF that the output must match (structured output), or None."""
    logprobs: int | None = None
    """None: no log probabilities (text events are plain `str`). 0..20: each generated token's log
    probability with that many most likely alternatives (text events are `Piece`s)."""

    @property
    def plain_greedy(self) -> bool:
        """Temperature 0 with nothing that reshapes the logits: the next token is simply the highest logit."""
        return (
            self.temperature <= 0.0
            and self.grammar is None
            and not self.logit_bias
            and self.repetition_penalty == 1.0
            and not self.presence_penalty
            and not self.frequency_penalty
        )


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probability and its step's most likely tokens, highest first.

    Log probabilities are over the whole vocabulary after the logit bias and the repetition, presence and
    frequency penalties, before temperature, top-k/top-p/min-p truncation and grammar masking.
    """

    token: bytes
    """The token's bytes as llama.cpp writes it (special tokens not rendered; may be part of a character)."""
    logprob: float
    top: tuple[tuple[bytes, float], ...]


@dataclass(frozen=True)
class Piece:
    """Text released to the client with the log probabilities of the tokens whose text it completes.

    All of a generation's Pieces together hold one entry per generated token whose text reached the client,
    in order; a token's entry is held back as long as any of its text is (part of a character, the possible
    start of a stop string). Tokens swallowed by a matched stop string, wholly or in part, and the
    end-of-generation token have no entry.
    """

    text: str
    logprobs: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with why it ended and how many tokens it took."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose cells were reused from an earlier request (prefix cache)."""


@dataclass
class WorkerCounters:
    """Counters the worker exposes, so tests and admins can see what generation really did."""

    tokens_generated: int = 0
    generations_started: int = 0
    generations_finished: int = 0
    generations_cancelled: int = 0
    prompt_tokens_cached: int = 0
    prompt_tokens_evaluated: int = 0
    """Prompt tokens actually decoded (not those whose cells were reused or copied)."""
    decode_steps: int = 0
    decode_failures: int = 0
    """Decodes that found no room in the pool (each is followed by an eviction or a preemption)."""
    preemptions: int = 0
    """Running sequences stopped to free cells, recomputed later."""
    waits_for_cells: int = 0
    """Admission attempts that found a free slot but not enough free cells."""
    cache_evictions: int = 0
    """Idle slots whose cached prefix was dropped for room."""


class GenerationCore(Protocol):
    """What the worker's HTTP side needs from any generation core."""

    counters: WorkerCounters

    def generate(
        self, prompt_tokens: list[int], params: SamplingParams
    ) -> AsyncIterator[str | Piece | Finished]:
        """Yield text pieces as they are decoded (`Piece`s when params.logprobs is set), then one Finished;
        closing the iterator cancels the job."""
        ...

    def generate_choices(
        self, prompt_tokens: list[int], params: SamplingParams, n: int
    ) -> list[AsyncIterator[str | Piece | Finished]]:
        """Queue `n` generations of one prompt together (all or none) that evaluate the prompt once; each
        iterator yields text (`Piece`s when params.logprobs is set), then one Finished; closing one
        cancels that choice only."""
        ...

    def begin_shutdown(self) -> None:
        """From now on, running and queued jobs end with EngineUnavailableError; returns at once."""
        ...

    def close(self) -> None:
        """Stop the core's thread(s) and wait for them."""
        ...
