"""Continuous batching: one scheduler thread decodes every running sequence in one llama.cpp batch.

Each step the scheduler admits waiting requests into free slots (reusing the cells of the longest matching
prefix any slot holds, or first waiting for a longer one that a running sequence is still evaluating), puts
one decode token per running sequence and chunks of pending prompt tokens into the same batch, calls
`llama_decode` once, samples each sequence with its own sampler chain and streams the text to its request.
A slot is released the moment its sequence finishes or its client leaves.

Each request may use the model's whole context, whatever the number of slots. Where the planner's pool holds
every slot's whole context, each slot has its own KV stream (a decoded token then attends only to its own
sequence's cells); otherwise all slots share one pool, and when it is full nothing fails: a request whose
prompt does not fit waits in the queue, a decode that finds no room takes idle slots' cached prefixes, then
preempts the most recently admitted sequence, recomputed when room returns (cell_pool.CellPool decides).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import llama_cpp

from appliance.engines.llamacpp.batch_plan import fill_batch, plan_batch
from appliance.engines.llamacpp.cell_pool import CellPool
from appliance.engines.llamacpp.core import Finished, Piece, SamplingParams, WorkerCounters
from appliance.engines.llamacpp.logprobs import token_logprob
from appliance.engines.llamacpp.native import NativeContext, NativeModel
from appliance.engines.llamacpp.outbox import Outbox, PendingRequest
from appliance.engines.llamacpp.placement import place, prefix_on_its_way
from appliance.engines.llamacpp.priority import apply_compute_priority
from appliance.engines.llamacpp.sampling import GrammarSampling, build_grammar, build_sampler
from appliance.engines.llamacpp.slots import Slot, Work, cells_in_use
from appliance.engines.llamacpp.text_stream import TextStream
from appliance.errors import ApplianceError, EngineError, EngineUnavailableError, QueueFullError
from appliance.settings import ComputePriority


class BatchingCore:
    """The generation core of a llama.cpp worker: `parallel` slots over the context's cells (a stream each,
    or one shared pool), a bounded wait queue, one thread; each request may use `context_length` tokens."""

    def __init__(
        self,
        model: NativeModel,
        context: NativeContext,
        context_length: int,
        parallel: int,
        queue_depth: int,
        stream_interval: int = 0,
        compute_priority: ComputePriority = "normal",
    ) -> None:
        self.counters = WorkerCounters()
        self._model = model
        self._context = context
        self._limit = context_length
        self._slots = [Slot(seq) for seq in range(parallel)]
        self._admissions = 0
        self._pool = CellPool(context, self._slots, self.counters)
        self._queue_depth = queue_depth
        self._waiting: deque[PendingRequest] = deque()
        self._outbox = Outbox(stream_interval)
        self._grammar_sampling = GrammarSampling(model.n_vocab)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shutting_down = False
        self._closed = False
        self._compute_priority = compute_priority
        self._threads_wanted: int | None = None
        """Set from the event loop, applied by the scheduler between two decodes (see set_threads)."""
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    @property
    def scheduler_thread_id(self) -> int | None:
        """The decoding thread's native id (its OpenMP team are threads it started)."""
        return self._thread.native_id

    @property
    def pool_tokens(self) -> int:
        """Cells of the KV cache in all: every slot's streams together, or the one pool they share."""
        return self._context.pool_tokens

    @property
    def kv_layout(self) -> str:
        """ "own_streams" (a stream of cells per slot) or "shared_pool" (one pool every slot draws on)."""
        return "own_streams" if self._context.own_streams else "shared_pool"

    def pool_cells_used(self) -> int:
        """Cells the slots hold, running or kept as prefix cache (a shared prefix once per holder)."""
        return min(cells_in_use(self._slots), self._context.pool_tokens)

    def generate(
        self, prompt_tokens: list[int], params: SamplingParams
    ) -> AsyncIterator[str | Piece | Finished]:
        """Queue a request now (429 at once if the queue is full) and return its events; leaving early
        cancels it. Queueing happens here, not at the first iteration, so a refused stream is a plain 429
        before any response starts rather than a 200 whose first event is an error."""
        return self.generate_choices(prompt_tokens, params, 1)[0]

    def generate_choices(
        self, prompt_tokens: list[int], params: SamplingParams, n: int
    ) -> list[AsyncIterator[str | Piece | Finished]]:
        """`n` choices of one prompt, queued together or not at all (429). The first evaluates the prompt;
        the others wait for it (placement.prefix_on_its_way), copy its cells and evaluate only the last
        prompt token themselves (a model that cannot share cells, a sliding-window one, evaluates the
        prompt per choice). With a seed,
        choice i samples with seed + i: reproducible, yet not n copies of one answer."""
        loop = asyncio.get_running_loop()
        requests: list[PendingRequest] = []
        for index in range(n):
            seeded = (
                params if params.seed is None or index == 0 else replace(params, seed=params.seed + index)
            )
            requests.append(PendingRequest(prompt_tokens, seeded, loop, asyncio.Queue()))
        with self._lock:
            if self._shutting_down:
                raise EngineUnavailableError("The engine is shutting down; retry shortly.")
            # Requests about to take a free slot are not waiting for one; the scheduler may not have
            # admitted them yet, so they count against the free slots, not against the queue.
            free_slots = sum(slot.request is None for slot in self._slots)
            if len(self._waiting) + n > self._queue_depth + free_slots:
                raise QueueFullError("Every slot is busy and the wait queue is full; retry shortly.")
            self._waiting.extend(requests)
        self._wake.set()
        streams = []
        for request in requests:
            events = self._events(request)
            # Never iterated (the client left before the stream began): the generator's `finally` cannot run.
            weakref.finalize(events, self._abandon, request)
            streams.append(events)
        return streams

    def _abandon(self, request: PendingRequest) -> None:
        request.cancelled = True
        self._wake.set()

    async def _events(self, request: PendingRequest) -> AsyncIterator[str | Piece | Finished]:
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

    def set_threads(self, threads: int) -> None:
        """Decode with `threads` compute threads from the next step on.

        The gateway halves the threads of the serving worker while a new version of its model loads and is
        checked beside it, so that the two never ask for more threads than there are cores.
        """
        self._threads_wanted = threads
        self._wake.set()

    def _run(self) -> None:
        apply_compute_priority(self._compute_priority)  # before the first decode makes the OpenMP team
        while not self._closed:
            wanted, self._threads_wanted = self._threads_wanted, None
            if wanted is not None:
                self._context.set_threads(wanted)
            if self._shutting_down:
                self._fail_everything(EngineUnavailableError("The engine is shutting down; retry shortly."))
            self._admit()
            active = [slot for slot in self._slots if slot.request is not None]
            if not active:
                self._wake.wait()
                self._wake.clear()
                continue
            self._step(active)
            self._outbox.step_done(len(active))

    def _admit(self) -> None:
        with self._lock:
            later: list[PendingRequest] = []
            while self._waiting:
                free = [slot for slot in self._slots if slot.request is None]
                if not free:
                    break
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()
                    self._pool.drop(request)
                    continue
                resume = self._pool.resumption(request)
                if resume is None and prefix_on_its_way(
                    self._slots, request.prompt, self._model.can_share_cells
                ):
                    later.append(self._waiting.popleft())  # its prompt's cells are on their way: shared
                    continue
                feed = resume.tokens if resume is not None else request.prompt
                if not self._pool.room_for(feed):
                    self.counters.waits_for_cells += 1
                    break  # first come, first served: later requests do not overtake a long one
                self._waiting.popleft()
                self._start(self._place(free, feed), request)
            self._waiting.extendleft(reversed(later))
        self._outbox.flush_if_urgent()  # a request refused at admission (no room) hears it now

    def _place(self, free: list[Slot], prompt: list[int]) -> Slot:
        return place(self._slots, free, prompt, self._context, self._model.can_share_cells)

    def _start(self, slot: Slot, request: PendingRequest) -> None:
        keep = len(slot.cells)
        self._admissions += 1
        slot.admitted = self._admissions
        resume = self._pool.take_resumption(request)
        if resume is not None:
            resume.restore(slot)
            slot.request, slot.prefill_at, slot.next_token = request, keep, None
            self.counters.prompt_tokens_cached += keep
            return
        try:
            if not request.params.plain_greedy:
                slot.sampler = build_sampler(request.params, self._model.vocab, self._model.n_vocab)
                slot.grammar = build_grammar(request.params, self._model.vocab)
        except ApplianceError as error:
            self._free_sampler(slot)
            self._outbox.emit(request, error)
            return
        slot.request = request
        slot.feed, slot.resume_token = request.prompt, None
        slot.text = TextStream(request.params.stop)
        slot.prefill_at = keep
        slot.cached = keep
        slot.next_token = None
        slot.generated = 0
        self.counters.generations_started += 1
        self.counters.prompt_tokens_cached += keep

    def _step(self, active: list[Slot]) -> None:
        for slot in active:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "cancelled")
        running = [slot for slot in active if slot.request is not None]
        work = plan_batch(running, self._context.batch_capacity, self.counters)
        while work and not self._decode(work):
            # No room in the pool for this batch (llama.cpp undid it): free some, then try again.
            self.counters.decode_failures += 1
            work = self._make_room(work)
        if work:
            self._after_decode(work)

    def _make_room(self, work: list[Work]) -> list[Work]:
        made = self._pool.make_room(work)
        if made.failed is not None:
            self._fail(made.failed, EngineError("the engine could not fit this sequence in its memory"))
        if made.preempted is not None:
            with self._lock:
                self._waiting.appendleft(made.preempted)
        return made.work

    def _decode(self, work: list[Work]) -> bool:
        fill_batch(self._context.batch, work)
        self.counters.decode_steps += 1
        return bool(llama_cpp.llama_decode(self._context.ctx, self._context.batch) == 0)

    def _after_decode(self, work: list[Work]) -> None:
        outputs = sum(part.logits for part in work)
        greedy: Any = None
        if any(part.logits and part.slot.sampler is None for part in work):
            # Every plain-greedy sequence's next token in one vectorised argmax over this step's logits.
            greedy = self._context.logits(outputs).argmax(axis=1)
        index = row = 0
        for part in work:
            slot = part.slot
            slot.cells.extend(part.tokens)
            index += len(part.tokens)
            if slot.next_token is None:
                slot.prefill_at += len(part.tokens)
                if slot.resume_token is not None and slot.prefill_at == len(slot.feed):
                    slot.next_token, slot.resume_token = slot.resume_token, None  # recomputed: go on
            if part.logits:
                if slot.request is not None:
                    if slot.sampler is None:
                        token = int(greedy[row])
                    elif slot.grammar is not None:
                        token = self._grammar_sampling.sample(
                            slot.sampler, slot.grammar, self._context.logits(outputs)[row]
                        )
                    else:
                        token = int(
                            llama_cpp.llama_sampler_sample(slot.sampler, self._context.ctx, index - 1)
                        )
                    if slot.request.params.logprobs is not None and not self._model.is_end_of_generation(
                        token
                    ):
                        self._note_logprob(slot, slot.request.params, token, row, outputs)
                    self._on_token(slot, slot.request, token)
                row += 1

    def _note_logprob(self, slot: Slot, params: SamplingParams, token: int, row: int, rows: int) -> None:
        logits = self._context.logits(rows)[row]
        slot.logprobs.append(token_logprob(logits, token, params, slot.history, self._model.token_text))
        slot.history.append(token)

    def _text_event(self, slot: Slot, request: PendingRequest, text: str) -> str | Piece:
        """Plain text, or with logprobs asked the text and the entries of the tokens fed since the last."""
        if request.params.logprobs is None:
            return text
        entries, slot.logprobs = tuple(slot.logprobs), []
        return Piece(text, entries)

    def _on_token(self, slot: Slot, request: PendingRequest, token: int) -> None:
        self.counters.tokens_generated += 1
        if self._model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        text = slot.text.feed(self._model.token_text(token))
        if text:
            self._outbox.emit(request, self._text_event(slot, request, text))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= request.params.max_tokens or len(slot.cells) + 1 >= self._limit:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: Slot, reason: str) -> None:
        request = slot.request
        if request is None:
            return
        if reason == "cancelled":
            self.counters.generations_cancelled += 1
        else:
            tail = slot.text.flush()
            if tail or (slot.logprobs and not slot.text.stopped):
                self._outbox.emit(request, self._text_event(slot, request, tail))
            self._outbox.emit(request, Finished(reason, len(request.prompt), slot.generated, slot.cached))
            self.counters.generations_finished += 1
        self._release(slot)

    def _fail(self, slot: Slot, error: ApplianceError) -> None:
        if slot.request is not None:
            self._outbox.emit(slot.request, error)
        self._context.forget(slot.seq, 0)
        slot.cells.clear()
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        self._free_sampler(slot)
        slot.history, slot.logprobs = [], []
        slot.request = None
        slot.next_token = None
        slot.released_at = time.monotonic()

    def _free_sampler(self, slot: Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None
        if slot.grammar is not None:
            llama_cpp.llama_sampler_free(slot.grammar)
            slot.grammar = None

    def _fail_everything(self, error: ApplianceError) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            self._pool.drop(request)
            self._outbox.emit(request, error)
        for slot in self._slots:
            if slot.request is not None:
                self._fail(slot, error)
        self._outbox.flush()
