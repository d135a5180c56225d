"""Waiting on the console in Pilot tests, and a TCP relay that can drop the connection to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import DataTable

STEPS = 400  # of 50 ms each: a bound on waiting, not a timing assertion


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, steps: int = STEPS) -> None:
    """Let the app run until `condition` holds; fail naming `what` if it never does."""
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"the console never showed {what}")


def rows(table: DataTable[str]) -> list[list[str]]:
    """The table's cells as text, row by row."""
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


class Relay:
    """Forwards a loopback port to the gateway; `stop` drops it as a dead network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        """Listen (again) on `port` (0: any free one)."""
        self.server = await asyncio.start_server(self._pipe_both, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            self.writers.clear()
            await self.server.wait_closed()
            self.server = None

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
