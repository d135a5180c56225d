"""Counting a worker's requests in flight, so that a replaced version is stopped only once it is idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx


class InFlightTransport(httpx.AsyncBaseTransport):
    """The worker's transport, counting requests whose answer is not yet read to its end or closed.

    A worker being replaced (blue-green) is stopped only once this reaches zero: requests finish on the
    version they started on. Counting here sees streams and plain requests of every caller alike.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.in_flight = 0
        self.idle = asyncio.Event()
        """Set while no request is in flight."""
        self.idle.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Count the request until its answer's body is closed (httpx closes it after reading)."""
        self.in_flight += 1
        self.idle.clear()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self.done()
            raise
        response.stream = _CountedBody(response.stream, self)
        return response

    def done(self) -> None:
        """One request finished."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def aclose(self) -> None:
        """Close the connections underneath."""
        await self._inner.aclose()


class _CountedBody(httpx.AsyncByteStream):
    """A response body that gives its request back to the count once, when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, owner: InFlightTransport) -> None:
        self._inner = inner
        self._owner: InFlightTransport | None = owner

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The inner iterator itself, not a generator around it: no extra frame per relayed token.
        assert isinstance(self._inner, httpx.AsyncByteStream)
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        if self._owner is not None:
            self._owner.done()
            self._owner = None
        if isinstance(self._inner, httpx.AsyncByteStream):
            await self._inner.aclose()
