"""Who gets the KV cells: admission room, eviction of cached prefixes, recompute preemption.

The scheduler (batching.BatchingCore) asks two questions of this module, in its own thread:
- `room_for(feed)`: may a sequence evaluating `feed` start beside the running ones? With one shared pool it
  fits if the running sequences' footprints plus `feed` fit, after taking idle slots' cached cells least
  useful first. With a stream per slot every slot holds a whole context, so it always fits.
- `make_room(work)`, after `llama_decode` found no cells for a batch: an idle slot's cache goes first; then
  the most recently admitted running sequence is preempted (its state kept in `suspended` until it is
  admitted again and recomputes its tokens). With a stream per slot another slot's cells are no help: the
  sequence that outgrew its stream fails alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import llama_cpp

from appliance.engines.llamacpp.core import WorkerCounters
from appliance.engines.llamacpp.native import NativeContext
from appliance.engines.llamacpp.outbox import PendingRequest
from appliance.engines.llamacpp.slots import Resume, Slot, Work, cells_in_use, eviction_order


@dataclass(frozen=True)
class RoomMade:
    """What freeing cells for a batch did: the batch to try again, and a request to fail or to requeue."""

    work: list[Work]
    failed: Slot | None = None
    """A sequence that cannot fit even alone (or outgrew its own stream): the caller fails it."""
    preempted: PendingRequest | None = None
    """A request whose sequence was preempted: the caller puts it first in line."""


@dataclass
class CellPool:
    """The cells of `context` as the `slots` hold them, and the preempted requests' kept state."""

    context: NativeContext
    slots: list[Slot]
    counters: WorkerCounters
    suspended: dict[int, Resume] = field(default_factory=dict)
    """Preempted requests waiting to go on, by id(request)."""

    def room_for(self, feed: list[int]) -> bool:
        """Whether a sequence evaluating `feed` fits beside the running ones, taking idle slots' cached
        cells (least useful first) if it needs them. With nothing running it always fits: the pool holds
        at least one whole context, and with a stream per slot every slot holds one."""
        running = [slot for slot in self.slots if slot.request is not None]
        if not running or self.context.own_streams:
            return True
        needed = sum(slot.footprint() for slot in running) + len(feed) + 1
        if needed > self.context.pool_tokens:
            return False
        for slot in eviction_order(self.slots, feed):
            cached = cells_in_use(s for s in self.slots if s.request is None)
            if needed + cached <= self.context.pool_tokens:
                break
            self.evict(slot)
        return True

    def evict(self, slot: Slot) -> None:
        """Free an idle slot's cached cells."""
        self.context.forget(slot.seq, 0)
        slot.cells.clear()
        self.counters.cache_evictions += 1

    def make_room(self, work: list[Work]) -> RoomMade:
        """Free cells for a batch that did not fit (see the module's docstring)."""
        running = [slot for slot in self.slots if slot.request is not None]
        if self.context.own_streams:
            longest = max((part.slot for part in work), key=lambda slot: len(slot.cells))
            return RoomMade([part for part in work if part.slot is not longest], failed=longest)
        idle = eviction_order(self.slots, [])
        if idle:
            self.evict(idle[0])
            return RoomMade(work)
        victim = max(running, key=lambda slot: slot.admitted)
        if len(running) == 1:
            return RoomMade([], failed=victim)
        request = self._preempt(victim)
        return RoomMade([part for part in work if part.slot is not victim], preempted=request)

    def _preempt(self, slot: Slot) -> PendingRequest | None:
        """Stop a running sequence and free its cells, keeping what it needs to go on later."""
        request = slot.request
        if request is None:
            return None
        self.suspended[id(request)] = Resume.of(slot)
        slot.sampler = slot.grammar = None  # the suspended state owns them now
        self.context.forget(slot.seq, 0)
        slot.cells.clear()
        slot.history, slot.logprobs = [], []
        slot.request, slot.next_token, slot.resume_token = None, None, None
        slot.released_at = time.monotonic()
        self.counters.preemptions += 1
        return request

    def resumption(self, request: PendingRequest) -> Resume | None:
        """The kept state of a preempted request, if it is one (left in place until it is admitted)."""
        return self.suspended.get(id(request))

    def take_resumption(self, request: PendingRequest) -> Resume | None:
        """The kept state of a preempted request being admitted again, no longer kept here."""
        return self.suspended.pop(id(request), None)

    def drop(self, request: PendingRequest) -> None:
        """A preempted request whose client left (or that fails): free its samplers."""
        resume = self.suspended.pop(id(request), None)
        if resume is not None:
            for sampler in (resume.sampler, resume.grammar):
                if sampler is not None:
                    llama_cpp.llama_sampler_free(sampler)
