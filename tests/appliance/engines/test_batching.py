"""The batching scheduler on the real model: concurrency, cancellation, prefix reuse, limits, grammars."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jsonschema
import pytest

from appliance.engines.llamacpp.core import Finished, Piece, SamplingParams
from appliance.engines.llamacpp.model import BATCH_TOKENS, LoadedModel, WorkerConfig
from appliance.engines.llamacpp.outbox import (
    AUTO_COALESCE_FROM,
    AUTO_MIN_GAP_S,
    Outbox,
    PendingRequest,
    stream_interval,
)
from appliance.engines.llamacpp.sampling import grammar_for
from appliance.engines.llamacpp.text_stream import TextStream
from appliance.errors import QueueFullError

SLOTS = 8
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three laws of robotics are",
    "My favourite recipe for pancakes:",
    "In 1969, the first person to walk on the moon",
    "Photosynthesis is the process by which",
    "A haiku about the sea:",
]


@pytest.fixture(scope="module")
def model(model_path: Path) -> Iterator[LoadedModel]:
    """The real model with eight slots of 512 tokens each."""
    loaded = LoadedModel(
        WorkerConfig(model_path, "m", context_length=SLOTS * 512, threads=2, parallel=SLOTS, queue_depth=16)
    )
    yield loaded
    loaded.close()


async def _run(model: LoadedModel, prompt: str, params: SamplingParams) -> tuple[list[str], Finished]:
    pieces: list[str] = []
    async for event in model.core.generate(model.tokenize(prompt), params):
        if isinstance(event, Finished):
            return pieces, event
        assert isinstance(event, str)  # no log probabilities asked: text comes as plain strings
        pieces.append(event)
    raise AssertionError("no Finished event")


GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


async def test_concurrent_greedy_equals_one_at_a_time(model_path: Path) -> None:
    """Eight greedy requests decoded together give the same text as each alone, token for token.

    Each side gets a fresh model: with a warm prefix cache the last prompt token is evaluated on its own
    instead of inside the prompt's batch, and llama.cpp's numerics may then drift after a few tokens.
    """

    def fresh() -> LoadedModel:
        return LoadedModel(
            # every step's text alone, so that pieces are tokens (the auto interval joins them by time)
            WorkerConfig(
                model_path, "m", context_length=SLOTS * 512, threads=2, parallel=SLOTS, stream_interval=1
            )
        )

    solo_model = fresh()
    try:
        alone = [await _run(solo_model, prompt, GREEDY) for prompt in PROMPTS]
    finally:
        solo_model.close()
    batch_model = fresh()
    try:
        together = await asyncio.gather(*(_run(batch_model, prompt, GREEDY) for prompt in PROMPTS))
        steps = batch_model.batching.counters.decode_steps
    finally:
        batch_model.close()
    for (solo_pieces, solo_end), (batch_pieces, batch_end) in zip(alone, together, strict=True):
        # Together, two steps' text may go out as one piece (the stream interval): compare the text.
        assert "".join(batch_pieces).startswith("".join(solo_pieces[:16]))
        assert batch_end.prompt_tokens == solo_end.prompt_tokens
    # decoded together: far fewer steps than the 8 x 24 tokens one at a time would take
    assert steps < 2 * GREEDY.max_tokens


def test_a_stream_interval_of_two_joins_steps_but_sends_the_first_token_alone(model_path: Path) -> None:
    """With stream_interval 2 the text arrives in about half as many pieces, the first one a single token,
    and it is the same text as with every step sent alone."""

    def text_of(interval: int) -> tuple[list[str], Finished]:
        config = WorkerConfig(
            model_path, "m", context_length=512, threads=2, parallel=1, stream_interval=interval
        )
        loaded = LoadedModel(config)
        try:
            return asyncio.run(
                _run(loaded, "Once upon a time,", SamplingParams(max_tokens=24, temperature=0.0))
            )
        finally:
            loaded.close()

    every_step, end = text_of(1)
    joined, joined_end = text_of(2)
    assert end.completion_tokens == joined_end.completion_tokens == len(every_step) == 24
    assert "".join(joined) == "".join(every_step)
    assert joined[0] == every_step[0]
    assert len(joined) <= 1 + (24 - 1 + 1) // 2


def test_auto_stream_interval_depends_on_the_running_sequences() -> None:
    """Auto (0): every step below AUTO_COALESCE_FROM sequences, every second one from there; settings win."""
    assert [stream_interval(0, n) for n in (1, AUTO_COALESCE_FROM - 1, AUTO_COALESCE_FROM, 16)] == [
        1,
        1,
        2,
        2,
    ]
    assert stream_interval(3, 1) == 3


def _sent_pieces(setting: int, step_s: float, steps: int) -> list[str]:
    """The events one request receives when each of `steps` decode steps (`step_s` apart on a fake clock)
    adds one letter of text and the last one ends the stream."""
    loop = asyncio.new_event_loop()
    try:
        now = [0.0]
        outbox = Outbox(setting, clock=lambda: now[0])
        request = PendingRequest([1], SamplingParams(max_tokens=steps), loop, asyncio.Queue())
        for step in range(steps):
            now[0] += step_s
            outbox.emit(request, chr(ord("a") + step))
            if step == steps - 1:
                outbox.emit(request, Finished("length", 1, steps))
            outbox.step_done(1)
        loop.run_until_complete(asyncio.sleep(0))  # run the deliveries the outbox scheduled
        pieces: list[str] = []
        while not request.events.empty():
            event = request.events.get_nowait()
            if isinstance(event, str):
                pieces.append(event)
        return pieces
    finally:
        loop.close()


def test_auto_interval_waits_a_minimum_gap_between_text_events() -> None:
    """Auto: with steps of 7 ms (a small model, one sequence) the first token goes alone, then text waits
    until AUTO_MIN_GAP_S has passed; a set interval of 1 sends every step; the end sends what is held."""
    step_s = 0.007
    per_event = int(AUTO_MIN_GAP_S // step_s) + 1  # steps until the gap is reached
    auto = _sent_pieces(0, step_s, 13)
    assert auto[0] == "a"
    assert "".join(auto) == "abcdefghijklm"
    assert [len(piece) for piece in auto[1:-1]] == [per_event] * (len(auto) - 2)
    assert len(auto) < 13 // 2
    assert _sent_pieces(1, step_s, 13) == list("abcdefghijklm")
    # steps slower than the gap: every step's text goes out on its own
    assert _sent_pieces(0, 2 * AUTO_MIN_GAP_S, 5) == list("abcde")


async def test_cancelling_half_leaves_the_rest_exact_and_frees_slots(model: LoadedModel) -> None:
    """Half of sixteen streams leave after a few pieces; the others end with exactly max_tokens tokens."""
    params = SamplingParams(max_tokens=32, temperature=0.8, seed=3)
    before = model.batching.counters.generations_cancelled

    async def leave_early(prompt: str) -> None:
        stream: AsyncIterator[str | Piece | Finished] = model.core.generate(model.tokenize(prompt), params)
        received = 0
        async for _event in stream:
            received += 1
            if received == 4:
                break
        await stream.aclose()  # type: ignore[attr-defined]

    prompts = [PROMPTS[i % len(PROMPTS)] + " Tell me more." for i in range(16)]
    outcomes = await asyncio.gather(
        *(leave_early(p) if i % 2 else _run(model, p, params) for i, p in enumerate(prompts))
    )
    finished = [outcome for outcome in outcomes if outcome is not None]
    assert len(finished) == 8
    for pieces, end in finished:
        assert end.finish_reason in {"length", "stop"}
        if end.finish_reason == "length":
            assert end.completion_tokens == 32
            assert pieces
    await asyncio.sleep(0.2)
    assert model.batching.counters.generations_cancelled >= before + 8
    # every slot is free again: a full round of new requests all finish
    again = await asyncio.gather(*(_run(model, p, GREEDY) for p in PROMPTS))
    assert all(end.finish_reason in {"length", "stop"} for _, end in again)


async def test_shared_system_prompt_is_served_from_cache(model: LoadedModel) -> None:
    """A second request with the same 500-token prefix reports those tokens as cached."""
    system = "You are a careful assistant. " * 80
    first_tokens = model.tokenize(system + "Question one: what is two plus two?")
    assert 450 < len(first_tokens) < 512
    params = SamplingParams(max_tokens=4, temperature=0.0)
    first = [e async for e in model.core.generate(first_tokens, params)][-1]
    second_tokens = model.tokenize(system + "Question two: name a colour.")
    second = [e async for e in model.core.generate(second_tokens, params)][-1]
    assert isinstance(first, Finished)
    assert isinstance(second, Finished)
    shared = next(i for i, (a, b) in enumerate(zip(first_tokens, second_tokens, strict=False)) if a != b)
    assert second.cached_tokens == shared
    assert shared > 400


async def test_a_prompt_sharing_only_the_system_prompt_copies_it_and_keeps_the_other_cached(
    model_path: Path,
) -> None:
    """A new question under a cached system prompt takes a fresh slot with a copy of the system prompt's
    cells, so the slot holding the first conversation keeps it; the copied cells give the same tokens as a
    prompt computed from scratch."""
    system = "You are a careful assistant who answers in one short sentence. " * 6
    first, second = system + "Question: what is the capital of France?", system + "Question: name a colour."

    def load() -> LoadedModel:
        config = WorkerConfig(
            model_path, "c", context_length=4 * 512, threads=2, parallel=4, stream_interval=1
        )  # pieces are tokens
        return LoadedModel(config)

    fresh = load()
    try:
        expected, _ = await _run(fresh, second, GREEDY)
    finally:
        fresh.close()
    warm = load()
    try:
        first_tokens, second_tokens = warm.tokenize(first), warm.tokenize(second)
        shared = next(i for i, (a, b) in enumerate(zip(first_tokens, second_tokens, strict=False)) if a != b)
        await _run(warm, first, GREEDY)
        got, end = await _run(warm, second, GREEDY)
        assert end.cached_tokens == shared
        assert got[:8] == expected[:8]
        _, again = await _run(warm, first, GREEDY)
        assert again.cached_tokens == len(first_tokens) - 1
    finally:
        warm.close()


async def test_concurrent_questions_on_one_document_evaluate_it_once(model_path: Path) -> None:
    """Four requests about one document, arriving together: the first evaluates the document and the
    others wait for its cells and share them (placement.prefix_on_its_way), rather than evaluating it four
    times side by side. (That shared cells give the tokens a whole prompt gives is the copy test's above;
    here the leader's answer is batched with the others' prompts, whose numerics differ slightly.)"""
    # Longer than one batch (BATCH_TOKENS): the document takes the first request several steps to evaluate.
    document = "The appliance keeps its weights encrypted at rest and serves them from memory. " * 90
    questions = [document + f"Question {i}: what is kept encrypted?" for i in range(4)]
    config = WorkerConfig(model_path, "d", context_length=4 * 2048, threads=2, parallel=4)
    together = LoadedModel(config)
    try:
        tokens = [together.tokenize(question) for question in questions]
        shared = next(i for i, (a, b) in enumerate(zip(tokens[0], tokens[1], strict=False)) if a != b)
        assert shared > 2 * BATCH_TOKENS
        runs = await asyncio.gather(*(_run(together, question, GREEDY) for question in questions))
        evaluated = together.batching.counters.prompt_tokens_evaluated
    finally:
        together.close()
    tails = sum(len(t) - shared for t in tokens)
    assert evaluated < shared + tails + 4  # the document once, not four times
    assert sorted(end.cached_tokens for _, end in runs) == [0, shared, shared, shared]
    assert all(end.finish_reason == "length" and end.completion_tokens == 24 for _, end in runs)


async def test_a_document_asked_again_reuses_a_slot_holding_it_and_keeps_other_documents(
    model_path: Path,
) -> None:
    """With one document already cached in two slots, a third question about it takes the idle slot that
    holds it (no copy) rather than the least recently used slot, which holds another document: that one
    is still cached afterwards."""
    report = "Harbour report: the cranes were inspected and the north quay was closed for repairs. " * 30
    manual = "The appliance keeps its weights encrypted at rest and serves them from memory. " * 30
    config = WorkerConfig(model_path, "r", context_length=3 * 2048, threads=2, parallel=3)
    params = SamplingParams(max_tokens=2, temperature=0.0)
    warm = LoadedModel(config)
    try:
        for prompt in (report + "Q: what closed?", *(manual + f"Q{i}: what is kept?" for i in range(3))):
            await _run(warm, prompt, params)
        _, end = await _run(warm, report + "Q: what was inspected?", params)
        report_tokens = len(warm.tokenize(report))
    finally:
        warm.close()
    assert end.cached_tokens >= report_tokens - 2  # the report survived the third manual question


async def test_full_queue_is_refused_with_queue_full(model_path: Path) -> None:
    """With both slots busy and the queue (depth 2) full, one more request is refused at once."""
    small = LoadedModel(
        WorkerConfig(model_path, "q", context_length=512, threads=2, parallel=2, queue_depth=2)
    )
    try:
        params = SamplingParams(max_tokens=64, temperature=0.0)
        running = [asyncio.create_task(_run(small, p, params)) for p in PROMPTS[:2]]
        while small.batching.counters.generations_started < 2:  # noqa: ASYNC110 - polls a counter the scheduler thread bumps
            await asyncio.sleep(0.01)
        running += [asyncio.create_task(_run(small, p, params)) for p in PROMPTS[2:4]]
        await asyncio.sleep(0.01)  # the two new requests are now waiting: the queue is full
        with pytest.raises(QueueFullError):
            await _run(small, "one too many", params)
        results = await asyncio.gather(*running)
        assert len(results) == 4
    finally:
        small.close()


async def test_json_schema_output_validates(model: LoadedModel) -> None:
    """Output constrained by a JSON schema's grammar parses and validates against the schema."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    params = SamplingParams(max_tokens=64, temperature=0.0, grammar=grammar)
    pieces, end = await _run(model, "A person described as JSON:", params)
    assert end.finish_reason == "stop"
    jsonschema.validate(json.loads("".join(pieces)), schema)


async def test_json_object_output_parses(model: LoadedModel) -> None:
    """response_format json_object gives text that parses as a JSON object."""
    params = SamplingParams(max_tokens=96, temperature=0.0, grammar=grammar_for({"type": "json_object"}))
    pieces, end = await _run(model, "Describe a cat as a JSON object:", params)
    assert end.finish_reason == "stop"
    assert isinstance(json.loads("".join(pieces)), dict)


async def test_stop_string_spanning_tokens_never_leaks(model: LoadedModel) -> None:
    """A stop string made of several tokens ends the text before it; no part of it is streamed."""
    free, _ = await _run(model, "Count: 1, 2, 3, 4, 5, 6, 7,", SamplingParams(max_tokens=20, temperature=0.0))
    text = "".join(free)
    assert " 9," in text
    stop = " 9,"
    pieces, end = await _run(
        model, "Count: 1, 2, 3, 4, 5, 6, 7,", SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,))
    )
    assert end.finish_reason == "stop"
    assert "".join(pieces) == text[: text.index(stop)]
    assert not any(" 9" in piece for piece in pieces)


def test_multibyte_characters_are_never_split(model: LoadedModel) -> None:
    """Characters whose bytes span several tokens come out whole, through the same path as generation."""
    text = "Crème brûlée, 寿司 and 🎉🚀 for everyone."
    tokens = model.native.tokenize(text, add_bos=False)
    pieces_of_bytes = [model.native.token_text(token) for token in tokens]
    assert any(
        piece.decode("utf-8", "replace") != piece.decode("utf-8", "ignore") for piece in pieces_of_bytes
    ), "the text should have tokens that end inside a character"
    stream = TextStream(())
    released = [stream.feed(piece) for piece in pieces_of_bytes]
    released.append(stream.flush())
    assert all("\ufffd" not in piece for piece in released)
    assert "".join(released) == text
