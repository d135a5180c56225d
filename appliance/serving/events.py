"""What happened to the served models, told to whoever listens (the console, over `GET /admin/events`).

A gateway publishes an event when a model starts loading, has loaded, failed to load, or was unloaded (and
why), when a version is activated or rolled back, and when a link's circuit changes state. Subscribers get
them in order from the moment they subscribe; a subscriber that does not keep up loses the oldest events and
never slows the publisher: publishing is a few dict operations on the event loop and never awaits.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

QUEUE_EVENTS = 256
"""Events kept for one subscriber that is not reading; the oldest go first (the console re-reads the state
on a gap, which `Event.id` shows)."""

Value = str | int | float | bool | None


@dataclass(frozen=True)
class Event:
    """One thing that happened: its kind (`model.loaded`, `circuit.changed`, ...), when, and its facts."""

    id: int
    """Consecutive per gateway: a subscriber that sees a gap knows it lost events."""
    kind: str
    at: float
    """Unix time."""
    fields: dict[str, Value] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Value]:
        """The event as the SSE stream sends it: id, kind and at beside its own fields."""
        return {**self.fields, "id": self.id, "kind": self.kind, "at": self.at}


class Events:
    """An in-process fan-out of events to any number of subscribers."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._queues: set[asyncio.Queue[Event]] = set()

    def publish(self, kind: str, **fields: Value) -> Event:
        """Tell every subscriber now; never blocks (a full subscriber queue drops its oldest event)."""
        event = Event(next(self._ids), kind, time.time(), dict(fields))
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    async def subscribe(self) -> AsyncIterator[Event]:
        """Every event published from now on, until the caller stops iterating."""
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_EVENTS)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
