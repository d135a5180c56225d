"""Continuous batching: one scheduler thread decodes every running sequence in one llama.cpp batch.

Each step the scheduler admits waiting requests into free slots (reusing the cells of the longest matching
prefix an idle slot still holds), puts one decode token per running sequence and chunks of pending prompt
tokens into the same batch, calls `llama_decode` once, samples each sequence with its own sampler chain and
streams the text to its request. A slot is released the moment its sequence finishes or its client leaves.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from appliance.engines.llamacpp.core import Finished, SamplingParams, WorkerCounters
from appliance.engines.llamacpp.native import NativeContext, NativeModel
from appliance.engines.llamacpp.sampling import build_sampler
from appliance.engines.llamacpp.text_stream import TextStream
from appliance.errors import ApplianceError, EngineError, EngineUnavailableError, QueueFullError

Event = str | Finished | BaseException


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    cancelled: bool = False
    """Set by the event loop when the client leaves; a plain flag, read by the scheduler each step."""

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(eq=False)
class _Slot:
    seq: int
    cells: list[int] = field(default_factory=list)
    """Tokens whose cells this sequence holds, in position order (kept after a request for prefix reuse)."""
    request: _Request | None = None
    sampler: Any = None
    text: TextStream = field(default_factory=lambda: TextStream(()))
    prefill_at: int = 0
    next_token: int | None = None
    generated: int = 0
    cached: int = 0
    released_at: float = 0.0


@dataclass(eq=False)
class _Work:
    """One slot's part of a batch: prompt chunk or one decode token, and whether it wants logits."""

    slot: _Slot
    tokens: list[int]
    logits: bool


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchingCore:
    """The generation core of a llama.cpp worker: `parallel` slots, a bounded wait queue, one thread."""

    def __init__(self, model: NativeModel, context: NativeContext, parallel: int, queue_depth: int) -> None:
        self.counters = WorkerCounters()
        self._model = model
        self._context = context
        self._slots = [_Slot(seq) for seq in range(parallel)]
        self._queue_depth = queue_depth
        self._waiting: deque[_Request] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shutting_down = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    @property
    def slot_context(self) -> int:
        """Tokens one sequence may hold: prompt plus completion."""
        return self._context.slot_context

    async def generate(
        self, prompt_tokens: list[int], params: SamplingParams
    ) -> AsyncIterator[str | Finished]:
        """Queue a request (429 if the queue is full) and stream its events; leaving early cancels it."""
        request = _Request(prompt_tokens, params, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._shutting_down:
                raise EngineUnavailableError("The engine is shutting down; retry shortly.")
            # Requests about to take a free slot are not waiting for one; the scheduler may not have
            # admitted them yet, so they count against the free slots, not against the queue.
            free_slots = sum(slot.request is None for slot in self._slots)
            if len(self._waiting) >= self._queue_depth + free_slots:
                raise QueueFullError("Every slot is busy and the wait queue is full; retry shortly.")
            self._waiting.append(request)
        self._wake.set()
        try:
            while True:
                event = await request.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            request.cancelled = True
            self._wake.set()

    def begin_shutdown(self) -> None:
        """Fail running and waiting requests at the next step; safe in a signal handler (sets flags only)."""
        self._shutting_down = True
        self._wake.set()

    def close(self) -> None:
        """Stop the scheduler and free the context and the model."""
        self.begin_shutdown()
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        for slot in self._slots:
            self._free_sampler(slot)
        self._context.close()
        self._model.close()

    # --- the scheduler thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            if self._shutting_down:
                self._fail_everything(EngineUnavailableError("The engine is shutting down; retry shortly."))
            self._admit()
            active = [slot for slot in self._slots if slot.request is not None]
            if not active:
                self._wake.wait()
                self._wake.clear()
                continue
            self._step(active)

    def _admit(self) -> None:
        with self._lock:
            while self._waiting:
                free = [slot for slot in self._slots if slot.request is None]
                if not free:
                    return
                request = self._waiting.popleft()
                if request.cancelled:
                    continue
                best = max(free, key=lambda s: (_common_prefix(s.cells, request.prompt), -s.released_at))
                self._start(best, request)

    def _start(self, slot: _Slot, request: _Request) -> None:
        # Reuse the cells of the longest common prefix, but always evaluate at least the last prompt token:
        # its logits give the first completion token.
        keep = min(_common_prefix(slot.cells, request.prompt), len(request.prompt) - 1)
        if not self._context.forget(slot.seq, keep):
            keep = 0
            self._context.forget(slot.seq, 0)
        del slot.cells[keep:]
        try:
            slot.sampler = build_sampler(request.params, self._model.vocab, self._model.n_vocab)
        except ApplianceError as error:
            request.emit(error)
            return
        slot.request = request
        slot.text = TextStream(request.params.stop)
        slot.prefill_at = keep
        slot.cached = keep
        slot.next_token = None
        slot.generated = 0
        self.counters.generations_started += 1
        self.counters.prompt_tokens_cached += keep

    def _plan(self, active: list[_Slot]) -> list[_Work]:
        """This step's batch: a decode token for each generating slot, then prompt chunks within budget."""
        work: list[_Work] = []
        budget = self._context.batch_capacity
        for slot in active:
            request = slot.request
            if request is None:
                continue
            if request.cancelled:
                self._finish(slot, "cancelled")
            elif slot.next_token is not None:
                work.append(_Work(slot, [slot.next_token], logits=True))
                budget -= 1
        for slot in active:
            request = slot.request
            if request is None or slot.next_token is not None or budget <= 0:
                continue
            chunk = request.prompt[slot.prefill_at : slot.prefill_at + budget]
            work.append(_Work(slot, chunk, logits=slot.prefill_at + len(chunk) == len(request.prompt)))
            budget -= len(chunk)
        return work

    def _step(self, active: list[_Slot]) -> None:
        work = self._plan(active)
        if not work:
            return
        if self._decode(work):
            self._after_decode(work)
            return
        # Like llama-server: a batch that does not fit is retried one sequence at a time, so only the
        # sequences that really cannot go on fail.
        self.counters.decode_failures += 1
        for part in work:
            if self._decode([part]):
                self._after_decode([part])
            else:
                self._fail(part.slot, EngineError("the engine could not fit this sequence in its memory"))

    def _decode(self, work: list[_Work]) -> bool:
        batch = self._context.batch
        n = 0
        for part in work:
            position = len(part.slot.cells)
            last = len(part.tokens) - 1
            for offset, token in enumerate(part.tokens):
                batch.token[n] = token
                batch.pos[n] = position + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = part.slot.seq
                batch.logits[n] = part.logits and offset == last
                n += 1
        batch.n_tokens = n
        self.counters.decode_steps += 1
        return bool(llama_cpp.llama_decode(self._context.ctx, batch) == 0)

    def _after_decode(self, work: list[_Work]) -> None:
        index = 0
        for part in work:
            slot = part.slot
            slot.cells.extend(part.tokens)
            index += len(part.tokens)
            if slot.next_token is None:
                slot.prefill_at += len(part.tokens)
            if part.logits and slot.request is not None:
                token = llama_cpp.llama_sampler_sample(slot.sampler, self._context.ctx, index - 1)
                self._on_token(slot, slot.request, int(token))

    def _on_token(self, slot: _Slot, request: _Request, token: int) -> None:
        self.counters.tokens_generated += 1
        if self._model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        text = slot.text.feed(self._model.token_text(token))
        if text:
            request.emit(text)
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= request.params.max_tokens or len(slot.cells) + 1 >= self.slot_context:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        request = slot.request
        if request is None:
            return
        if reason == "cancelled":
            self.counters.generations_cancelled += 1
        else:
            tail = slot.text.flush()
            if tail:
                request.emit(tail)
            request.emit(Finished(reason, len(request.prompt), slot.generated, slot.cached))
            self.counters.generations_finished += 1
        self._release(slot)

    def _fail(self, slot: _Slot, error: ApplianceError) -> None:
        if slot.request is not None:
            slot.request.emit(error)
        self._context.forget(slot.seq, 0)
        slot.cells.clear()
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        self._free_sampler(slot)
        slot.request = None
        slot.next_token = None
        slot.released_at = time.monotonic()

    def _free_sampler(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None

    def _fail_everything(self, error: ApplianceError) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.emit(error)
        for slot in self._slots:
            if slot.request is not None:
                self._fail(slot, error)
