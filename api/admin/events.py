"""GET /admin/events: the gateway's events (loads, unloads, activations, circuit changes, registry changes)
as a server-sent event stream, so the console refreshes when something happens instead of polling for it.

Each event is `event: <kind>`, `id: <id>` and `data: <its JSON>`; ids are consecutive, so a client that
sees a gap lost events (it did not keep up) and re-reads the state. A comment goes out every KEEP_ALIVE_S
so that a quiet stream is not taken for a dead one. The stream ends when the client leaves, and at once when
the gateway begins to shut down (it must not hold the drain open until its deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.response import Stream

from api.auth import admin_only
from api.drain import Drain
from api.state import GatewayState
from appliance.serving.events import Event, Events
from appliance.wire.sse import MEDIA_TYPE, SSE_HEADERS, sse_comment, sse_event

EVENTS_PATH = "/admin/events"
KEEP_ALIVE_S = 15.0
SUBSCRIBED = "subscribed"
"""The comment a stream opens with: from then on no event is missed (a client may act once it reads it)."""


def event_bytes(event: Event) -> bytes:
    """One event in the stream's framing."""
    return sse_event(event.kind, event.id, msgspec.json.encode(event.as_dict()))


async def event_stream(
    events: Events, drain: Drain, keep_alive_s: float = KEEP_ALIVE_S
) -> AsyncGenerator[bytes, None]:
    """Every event published from the first yield on, a keep-alive comment when quiet, until drain begins."""
    subscription = events.subscribe()
    # The next event is awaited in a task of its own, so that waiting for it can time out (a keep-alive)
    # without cancelling the subscription itself.
    following: asyncio.Future[Event] = asyncio.ensure_future(anext(subscription))
    ending = asyncio.ensure_future(drain.begun())
    try:
        await asyncio.sleep(0)  # the task's first step subscribes: nothing published after this is missed
        yield sse_comment(SUBSCRIBED)
        while not ending.done():
            done, _ = await asyncio.wait(
                (following, ending), timeout=keep_alive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if following in done:
                yield event_bytes(following.result())
                following = asyncio.ensure_future(anext(subscription))
            elif not done:
                yield sse_comment("keep-alive")
    finally:
        for task in (following, ending):
            task.cancel()
        await asyncio.gather(following, ending, return_exceptions=True)
        if isinstance(subscription, AsyncGenerator):  # one paused at a yield runs its clean-up now
            await subscription.aclose()


@get(EVENTS_PATH, guards=[admin_only])
async def admin_events(gateway: NamedDependency[GatewayState]) -> Stream:
    """The event stream; not audited (the console holds it open while it runs)."""
    return Stream(event_stream(gateway.events, gateway.drain), media_type=MEDIA_TYPE, headers=SSE_HEADERS)
