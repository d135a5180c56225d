"""The generation core behind a small interface: submit a job, read its tokens as they come.

This core generates one sequence at a time in a dedicated thread. The continuous-batching scheduler replaces
it behind the same `GenerationCore` protocol, so the HTTP side does not change.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import llama_cpp
import numpy as np
import numpy.typing as npt

from appliance.errors import EngineUnavailableError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; the defaults are OpenAI's (temperature 1, top_p 1)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with why it ended and how many tokens it took."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class WorkerCounters:
    """Counters the worker exposes, so tests and admins can see what generation really did."""

    tokens_generated: int = 0
    generations_started: int = 0
    generations_finished: int = 0
    generations_cancelled: int = 0


class GenerationCore(Protocol):
    """What the worker's HTTP side needs from any generation core."""

    counters: WorkerCounters

    def generate(self, prompt_tokens: list[int], params: SamplingParams) -> AsyncIterator[str | Finished]:
        """Yield text pieces as they are decoded, then one Finished; closing the iterator cancels the job."""
        ...

    def begin_shutdown(self) -> None:
        """From now on, running and queued jobs end with EngineUnavailableError; returns at once."""
        ...

    def close(self) -> None:
        """Stop the core's thread(s) and wait for them."""
        ...


@dataclass
class _Job:
    prompt_tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[str | Finished | BaseException]
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0

    def emit(self, event: str | Finished | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class SequentialCore:
    """One llama-cpp-python `Llama` driven by one thread, one job at a time, in arrival order."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.counters = WorkerCounters()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        # A plain flag, not a threading.Event: it is set from a signal handler, where taking the Event's
        # lock can deadlock against the very frame the signal interrupted.
        self._shutting_down = False
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    async def generate(
        self, prompt_tokens: list[int], params: SamplingParams
    ) -> AsyncIterator[str | Finished]:
        """Queue a job and stream its events; leaving early (client gone) stops it at the next token."""
        job = _Job(prompt_tokens, params, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancelled.set()

    def begin_shutdown(self) -> None:
        """Stop the running job at its next token and refuse queued ones, so requests end at once.

        Safe to call from a signal handler: it only sets a flag.
        """
        self._shutting_down = True

    def close(self) -> None:
        """Stop the thread after its current job and wait for it."""
        self.begin_shutdown()
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            if self._shutting_down:
                job.emit(EngineUnavailableError("The engine is shutting down; retry shortly."))
                continue
            self.counters.generations_started += 1
            try:
                job.emit(self._generate(job))
            except Exception as error:  # noqa: BLE001 - any engine failure must reach the request, not kill the thread
                job.emit(error)

    def _generate(self, job: _Job) -> Finished:
        prompt_length = len(job.prompt_tokens)

        def count_and_check(ids: npt.NDArray[np.intc], _logits: npt.NDArray[np.single]) -> bool:
            # llama-cpp-python calls this after every sampled token with the tokens evaluated so far (the
            # sampled one not yet among them), and once more at the end: the one place that sees every
            # token, so it counts them and stops generation within a token of the client going away.
            sampled = len(ids) - prompt_length + 1
            self.counters.tokens_generated += sampled - job.completion_tokens
            job.completion_tokens = sampled
            return job.cancelled.is_set() or self._shutting_down

        params = job.params
        finish_reason = "stop"
        for chunk in self._llm.create_completion(
            prompt=job.prompt_tokens,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop),
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            repeat_penalty=1.0,
            stopping_criteria=llama_cpp.StoppingCriteriaList([count_and_check]),
            stream=True,
        ):
            choice = chunk["choices"][0]
            if choice["text"]:
                job.emit(choice["text"])
            finish_reason = choice["finish_reason"] or finish_reason
        if self._shutting_down and not job.cancelled.is_set():
            raise EngineUnavailableError("The engine shut down during this generation; retry shortly.")
        if job.cancelled.is_set():
            self.counters.generations_cancelled += 1
            finish_reason = "cancelled"
        else:
            self.counters.generations_finished += 1
        return Finished(finish_reason, len(job.prompt_tokens), job.completion_tokens)
