"""The in-flight count of a worker's client: up while an answer is open, down once it is read or closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from appliance.inflight import InFlightTransport


class _Events(httpx.AsyncByteStream):
    """A body that arrives in two SSE events, as a worker's stream does over its socket."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            yield event


def _transport(fail: bool = False) -> InFlightTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if fail:
            raise httpx.ConnectError("worker gone", request=request)
        return httpx.Response(200, stream=_Events())

    return InFlightTransport(httpx.MockTransport(answer))


async def test_a_stream_counts_until_closed_and_a_plain_request_until_read() -> None:
    """Open stream: 1 and not idle; closed: 0 and idle. A plain post is read and closed by httpx."""
    transport = _transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        async with client.stream("POST", "/v1/completions") as streamed:
            assert (transport.in_flight, transport.idle.is_set()) == (1, False)
            assert b"".join([chunk async for chunk in streamed.aiter_raw()]) == b"data: 1\n\ndata: 2\n\n"
        assert (transport.in_flight, transport.idle.is_set()) == (0, True)
        plain = await client.post("/v1/completions")
        assert plain.status_code == 200
        assert transport.in_flight == 0


async def test_a_failed_request_is_not_counted() -> None:
    """A connection error gives the request back to the count at once."""
    transport = _transport(fail=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/v1/completions")
    assert (transport.in_flight, transport.idle.is_set()) == (0, True)
