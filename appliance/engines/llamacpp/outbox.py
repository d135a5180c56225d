"""The scheduler's outbox: each step's events handed to the event loop, text joined over a stream interval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.engines.llamacpp.core import Finished, Piece, SamplingParams

Event = str | Piece | Finished | BaseException
AUTO_COALESCE_FROM = 4
"""Running sequences from which the automatic stream interval sends two steps' text in one event."""
AUTO_MIN_GAP_S = 0.025
"""With the automatic interval, text goes out at most every 25 ms (40 events a second, still smooth to a
reader): a small model on few sequences decodes a step in about 7 ms, and waking the worker's event loop,
the gateway and the client for every token took about 10% of the tokens a second at concurrency 1 on two
cores (bench/relay_cpu_bench.py)."""


@dataclass(eq=False)
class PendingRequest:
    """One request between its arrival and its end, as the scheduler and the event loop share it."""

    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    cancelled: bool = False
    """Set by the event loop when the client leaves; a plain flag, read by the scheduler each step."""
    started: bool = False
    """Whether its first event was emitted (that one goes out at once: time to first token)."""


def stream_interval(setting: int, running: int) -> int:
    """Steps whose text is sent together at least: the setting, or with 0 (auto) 1 for a few sequences and
    2 from AUTO_COALESCE_FROM on, where relaying every token alone costs a measurable share of the cores.
    Auto also waits for AUTO_MIN_GAP_S since the last event (see `Outbox.step_done`)."""
    if setting > 0:
        return setting
    return 2 if running >= AUTO_COALESCE_FROM else 1


def coalesced(outbox: list[tuple[PendingRequest, Event]]) -> list[tuple[PendingRequest, Event]]:
    """The outbox with each request's consecutive text pieces joined: one event, one write, per request."""
    merged: list[tuple[PendingRequest, Event]] = []
    last: dict[PendingRequest, int] = {}
    for request, event in outbox:
        at = last.get(request)
        previous = merged[at][1] if at is not None else None
        if at is not None and isinstance(event, str) and isinstance(previous, str):
            merged[at] = (request, previous + event)
            continue
        if at is not None and isinstance(event, Piece) and isinstance(previous, Piece):
            merged[at] = (request, Piece(previous.text + event.text, previous.logprobs + event.logprobs))
            continue
        last[request] = len(merged)
        merged.append((request, event))
    return merged


def deliver(outbox: list[tuple[PendingRequest, Event]]) -> None:
    """On the event loop: hand a step's events to their requests."""
    for request, event in outbox:
        request.events.put_nowait(event)


class Outbox:
    """The events of the scheduler's steps, handed to the event loop in one call per flush.

    Text waits for `stream_interval` steps and, with the automatic interval, AUTO_MIN_GAP_S since the last
    flush (one event-loop wake and one write per request for all of them); a first token, an end or an error
    makes the next flush immediate.
    """

    def __init__(self, interval_setting: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_setting = interval_setting
        self._min_gap_s = AUTO_MIN_GAP_S if interval_setting == 0 else 0.0
        self._clock = clock
        self._events: list[tuple[PendingRequest, Event]] = []
        self._held_steps = 0
        self._flushed_at = clock()
        self._urgent = False

    def emit(self, request: PendingRequest, event: Event) -> None:
        """Queue one event of `request` (called on the scheduler thread)."""
        if not request.started or not isinstance(event, str | Piece):
            self._urgent = True
            request.started = True
        self._events.append((request, event))

    def step_done(self, running: int) -> None:
        """A decode step ended: flush if something must not wait or the interval is reached."""
        self._held_steps += 1
        due = (
            self._held_steps >= stream_interval(self._interval_setting, running)
            and self._clock() - self._flushed_at >= self._min_gap_s
        )
        if self._urgent or due:
            self.flush()

    def flush_if_urgent(self) -> None:
        """Flush only if a first token, an end or an error is waiting."""
        if self._urgent:
            self.flush()

    def flush(self) -> None:
        """Hand every queued event to its request's event loop: one wake-up per loop, not one per token."""
        self._held_steps, self._urgent = 0, False
        if not self._events:
            return
        self._flushed_at = self._clock()
        events, self._events = coalesced(self._events), []
        loops = {request.loop for request, _ in events}
        for loop in loops:
            mine = events if len(loops) == 1 else [item for item in events if item[0].loop is loop]
            # A worker stopped mid-generation (the gateway's drain cut the stream) closes its loop while the
            # scheduler finishes a step: nobody is left to read these events, so they are dropped.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, mine)
