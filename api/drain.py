"""Graceful shutdown: stop accepting, let running streams finish up to `[server] drain_timeout_s`, then stop.

uvicorn already does the ordering on SIGTERM or Ctrl-C: it closes the listening socket (new connections are
refused), closes idle keep-alive connections, waits for running requests, and only then runs the lifespan's
shutdown, which stops the workers. What it lacks is a clean end for a stream that outlives the wait: it would
cancel the task and the client would see a truncated body. So the gateway keeps its own deadline, a little
before uvicorn's, and a stream still running at the deadline ends with an OpenAI-shaped error event and
[DONE] instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Awaitable
from types import FrameType
from typing import Any, TypeVar

import uvicorn

from appliance.errors import EngineUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

CUT_GRACE_S = 5.0
"""Time after the drain deadline for cut streams to send their error event before uvicorn cancels them."""


class StreamCutError(Exception):
    """The drain deadline passed while a stream was still running."""


class Drain:
    """The gateway's shutdown state: whether it is draining, and the deadline for requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._begun = asyncio.Event()
        self._expired = asyncio.Event()

    def begin(self, timeout_s: float) -> None:
        """Start draining: running requests get `timeout_s` seconds more."""
        if self.draining:
            return
        self.draining = True
        self._begun.set()
        asyncio.get_running_loop().call_later(timeout_s, self._expired.set)

    async def begun(self) -> None:
        """Return once draining begins: an endless stream (admin events) ends then, not at the deadline."""
        await self._begun.wait()

    @property
    def expired(self) -> bool:
        """Whether the drain deadline has passed."""
        return self._expired.is_set()

    async def bounded(self, work: Awaitable[T]) -> T:
        """Await `work`, or raise StreamCutError if the drain deadline passes first."""
        if self._expired.is_set():
            if asyncio.iscoroutine(work):
                work.close()  # never started: close it so it is not reported as never awaited
            raise StreamCutError
        task = asyncio.ensure_future(work)
        deadline = asyncio.ensure_future(self._expired.wait())
        try:
            await asyncio.wait((task, deadline), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled from outside (the request's own deadline, a client gone): the work goes too, and its
            # outcome is consumed rather than reported later as never retrieved.
            task.cancel()
            task.add_done_callback(_consume)
            raise
        finally:
            deadline.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise StreamCutError
        return task.result()


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def cut_error(timeout_s: float) -> EngineUnavailableError:
    """The error event that ends a stream still running at the drain deadline."""
    return EngineUnavailableError(
        f"The gateway is shutting down; the stream was cut after the {timeout_s:g} s drain timeout."
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the gateway's drain deadline armed as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_timeout_s = timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Arm the drain deadline, then let uvicorn stop accepting and wait for running requests."""
        log.info("draining: no new connections; running requests get %g s", self.drain_timeout_s)
        self.drain.begin(self.drain_timeout_s)
        await super().shutdown(sockets)


def exit_cleanly_on_sigterm() -> None:
    """Make a drained SIGTERM end the process with status 0 (systemd's stop), not death by the signal.

    uvicorn restores the handler it found and raises a caught signal again after its graceful shutdown; the
    handler found is this one, so the process exits 0 once shutdown is complete."""

    def leave(_signum: int, _frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, leave)


def uvicorn_timeout_s(drain_timeout_s: float) -> int:
    """uvicorn's own graceful-shutdown limit: after ours, so cut streams can still send their error event."""
    return int(drain_timeout_s + CUT_GRACE_S) + 1
