"""The admin event stream's framing and lifetime, over a real Events bus and Drain: events after the
opening comment in order and whole, a keep-alive comment when quiet, the end when draining begins."""

from __future__ import annotations

import asyncio
import json

from api.admin.events import SUBSCRIBED, event_stream
from api.drain import Drain
from appliance.serving.events import Events
from appliance.wire.sse import SseEvent, SseReader


def _read(chunks: list[bytes]) -> tuple[list[SseEvent], list[str]]:
    """Events and comment lines of the chunks, as a client parses them."""
    reader = SseReader()
    events, comments = [], []
    for line in b"".join(chunks).decode().split("\n"):
        if line.startswith(":"):
            comments.append(line[1:].strip())
        if (event := reader.feed(line)) is not None:
            events.append(event)
    return events, comments


async def test_events_come_in_order_with_kind_id_and_their_json() -> None:
    """Nothing published after the opening comment is missed; each event is its kind, id and as_dict()."""
    bus, drain = Events(), Drain()
    stream = event_stream(bus, drain, keep_alive_s=30)
    opening = await anext(stream)
    assert _read([opening])[1] == [SUBSCRIBED]
    sent = [
        bus.publish("model.loaded", model="a", load_ms=12.5, memory_bytes=1024),
        bus.publish("circuit.changed", link="a", state="open"),
    ]
    got = [await anext(stream), await anext(stream)]
    events, _ = _read(got)
    assert [(e.kind, e.id) for e in events] == [("model.loaded", "1"), ("circuit.changed", "2")]
    assert [json.loads(e.data) for e in events] == [e.as_dict() for e in sent]
    await stream.aclose()


async def test_a_quiet_stream_sends_keep_alive_comments() -> None:
    """With nothing published, a comment goes out every keep-alive interval."""
    stream = event_stream(Events(), Drain(), keep_alive_s=0.05)
    await anext(stream)
    quiet = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
    assert _read(quiet) == ([], ["keep-alive", "keep-alive"])
    await stream.aclose()


async def test_the_stream_ends_when_draining_begins() -> None:
    """Shutdown does not wait for the stream: it ends as soon as the drain begins."""
    bus, drain = Events(), Drain()
    stream = event_stream(bus, drain, keep_alive_s=30)
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    drain.begin(60)
    try:
        await asyncio.wait_for(waiting, 5)
    except StopAsyncIteration:
        pass
    else:
        raise AssertionError("the stream went on after the drain began")
    bus.publish("model.loaded", model="late")  # no subscriber left to take it: publishing never blocks


async def test_a_client_that_leaves_unsubscribes() -> None:
    """Closing the stream (the client left) ends its subscription: the stream is finished for good."""
    bus = Events()
    stream = event_stream(bus, Drain(), keep_alive_s=30)
    await anext(stream)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    pending.cancel()  # as Litestar cancels the response when the client disconnects
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()
    bus.publish("model.loaded", model="after")
    try:
        await anext(stream)
    except StopAsyncIteration:
        return
    raise AssertionError("a closed stream gave another event")
