"""Cancel non-streamed work whose client hung up (the gateway's deadline, a killed client): a generation or
an embedding in a worker, the call to the worker in the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from litestar import Request

from appliance.errors import ClientClosedRequestError

T = TypeVar("T")


async def _hang_up(request: Request[Any, Any, Any]) -> None:
    """Return when the client disconnects; the body has been read, so nothing else arrives first."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request[Any, Any, Any], work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; if the client hangs up first, cancel it (a generation or embedding stops), raise 499."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_hang_up(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Let the cancellation run through the generation's cleanup before answering.
            await asyncio.wait({task})
    if task.cancelled():
        raise ClientClosedRequestError("The client closed the connection before the answer was ready.")
    return task.result()
