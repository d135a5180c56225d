"""One KV pool shared by every slot, on the real model: a request may use the whole context whatever the
slots; when the pool is full, requests wait for cells and running sequences are preempted and recomputed,
and nothing fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.engines.llamacpp.core import Finished, SamplingParams
from appliance.engines.llamacpp.model import LoadedModel, WorkerConfig

COUNTING = "Counting from one to one thousand: " + ", ".join(str(n) for n in range(1, 90)) + ","
"""A prompt (~300 tokens) whose greedy continuation goes on for hundreds of tokens without ending."""


async def _text(model: LoadedModel, tokens: list[int], params: SamplingParams) -> tuple[str, Finished]:
    pieces: list[str] = []
    async for event in model.core.generate(tokens, params):
        if isinstance(event, Finished):
            return "".join(pieces), event
        assert isinstance(event, str)
        pieces.append(event)
    raise AssertionError("no Finished event")


def _loaded(model_path: Path, **config: int) -> LoadedModel:
    return LoadedModel(WorkerConfig(model_path, "m", threads=2, **config))  # type: ignore[arg-type]


async def test_one_request_may_use_the_whole_trained_context(model_path: Path) -> None:
    """Four slots, no context setting: a request gets all 8,192 trained tokens, not a quarter of them."""
    model = _loaded(model_path, context_length=0, parallel=4)
    try:
        assert model.context_length == 8192
        assert model.batching.pool_tokens == 4 * 8192
        prompt = model.tokenize("Summarise: " + "the quick brown fox jumps over the lazy dog. " * 600)
        assert len(prompt) > 6000
        text, done = await _text(model, prompt, SamplingParams(max_tokens=8, temperature=0.0))
        assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", len(prompt), 8)
        assert text
    finally:
        model.close()


async def test_a_full_pool_preempts_and_both_answers_match_running_alone(model_path: Path) -> None:
    """Two sequences that cannot both finish in a pool of 1,024 cells: one is preempted, recomputed when
    room returns, and both greedy answers are the ones each gives alone."""
    greedy = SamplingParams(max_tokens=360, temperature=0.0)
    alone_model = _loaded(model_path, context_length=1024, parallel=1)
    try:
        first = alone_model.tokenize(COUNTING)
        second = alone_model.tokenize("Numbers: " + COUNTING)
        assert 300 < len(first) < 400
        alone = [await _text(alone_model, tokens, greedy) for tokens in (first, second)]
    finally:
        alone_model.close()
    assert all(done.completion_tokens == 360 for _, done in alone)  # long enough to overfill the pool
    model = _loaded(model_path, context_length=1024, parallel=2, kv_pool_tokens=1024)
    try:
        together = await asyncio.gather(_text(model, first, greedy), _text(model, second, greedy))
        assert model.core.counters.preemptions >= 1
        assert [text for text, _ in together] == [text for text, _ in alone]
        assert [done.completion_tokens for _, done in together] == [360, 360]
    finally:
        model.close()


async def test_requests_wait_for_cells_and_all_answer(model_path: Path) -> None:
    """Four slots but room for about two prompts: the others wait in the queue, then all four answer."""
    model = _loaded(model_path, context_length=1024, parallel=4, kv_pool_tokens=1024)
    try:
        prompts = [model.tokenize(f"{n}. " + COUNTING) for n in range(4)]
        params = SamplingParams(max_tokens=16, temperature=0.0)
        answers = await asyncio.gather(*(_text(model, tokens, params) for tokens in prompts))
        assert [done.finish_reason for _, done in answers] == ["length"] * 4
        assert model.core.counters.waits_for_cells >= 1
    finally:
        model.close()
