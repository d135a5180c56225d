"""The console's residency controls over a recording fake of the admin API: the models screen shows state,
memory, idle time and expiry; l loads, u asks then unloads, p pins and unpins the selected model; the
overview shows the budget; an event on the gateway's stream refreshes the models screen at once, and the
console reconnects when the stream drops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
from textual.widgets import DataTable, Static

from appliance.wire.residency import KeepAliveSet, ModelLoaded, ModelUnloaded, ResidencyReport
from appliance.wire.sse import SseEvent
from tests.tui.fixed import RESIDENCY, FixedSource
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import ConnectionLost
from tui.history import MetricsHistory
from tui.schemas import Overview
from tui.screens.confirm import ConfirmScreen
from tui.screens.models import COLUMNS

SMOL = "smollm2-135m"


class RecordingSource(FixedSource):
    """The fixed data; residency changes are recorded, pins are kept, events come from a queue."""

    def __init__(self, drops: int = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.residency_reads = 0
        self.pinned = False
        self.queue: asyncio.Queue[SseEvent] = asyncio.Queue()
        self.subscriptions = 0
        self.drops = drops
        """How many times the event stream drops at once before it stays up."""

    async def residency(self) -> ResidencyReport:
        """The fixed report, with the pin as last set."""
        self.residency_reads += 1
        model = msgspec.structs.replace(RESIDENCY.data[0], pinned=self.pinned)
        return msgspec.structs.replace(RESIDENCY, data=(model,))

    async def load_model(self, name: str) -> ModelLoaded:
        """Record the load."""
        self.calls.append(("load", name))
        return await super().load_model(name)

    async def unload_model(self, name: str) -> ModelUnloaded:
        """Record the unload."""
        self.calls.append(("unload", name))
        return await super().unload_model(name)

    async def set_pinned(self, name: str, pinned: bool) -> KeepAliveSet:
        """Record and keep the pin."""
        self.calls.append(("pin" if pinned else "unpin", name))
        self.pinned = pinned
        return await super().set_pinned(name, pinned)

    async def events(self) -> AsyncIterator[SseEvent]:
        """The queue's events; the first `drops` subscriptions are lost at once."""
        self.subscriptions += 1
        if self.subscriptions <= self.drops:
            raise ConnectionLost("dropped")
        yield SseEvent("stream.opened", "", "")
        while True:
            yield await self.queue.get()


def console(source: RecordingSource) -> ConsoleApp:
    """The console over `source`: no timed polls (the test drives every refresh), events followed."""
    history = MetricsHistory.fixed([], [], [])
    return ConsoleApp(source, poll_s=None, history=history, follow_events=True)


def table_rows(app: ConsoleApp) -> list[list[str]]:
    """The models table's cells."""
    table: DataTable[str] = app.screen.query_one("#models", DataTable)
    return rows(table)


def residency_of(row: list[str]) -> list[str]:
    """Name, status, state, GiB, idle and until of one row."""
    return [row[COLUMNS.index(column)] for column in ("name", "status", "state", "GiB", "idle", "until")]


async def test_models_screen_shows_residency_and_the_budget() -> None:
    """A loaded idle model shows idle, its memory, idle time and expiry; a disabled one dashes."""
    app = console(RecordingSource())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(table_rows(app)) == 2, "the models")
        assert [residency_of(r) for r in table_rows(app)] == [
            [SMOL, "enabled", "idle", "0.6", "42s", "in 4m"],
            ["qwen2.5-7b", "disabled", "-", "-", "-", "-"],
        ]
        budget = str(app.screen.query_one("#models-budget", Static).render())
        assert budget == "RAM budget 0.6 of 4.0 GiB; 1 of max 2 loaded"


async def test_l_loads_u_asks_then_unloads_p_pins_and_unpins() -> None:
    """Each key acts on the selected model; `n` at the unload question changes nothing."""
    source = RecordingSource()
    app = console(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(table_rows(app)) == 2, "the models")
        await pilot.press("l")
        status = app.screen.query_one("#models-status", Static)
        await until(pilot, lambda: "loaded in 1.5 s" in str(status.render()), "the load's answer")
        assert source.calls == [("load", SMOL)]

        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the unload question")
        await pilot.press("n")
        await pilot.pause()
        assert source.calls == [("load", SMOL)]
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the unload question")
        await pilot.press("y")
        await until(pilot, lambda: ("unload", SMOL) in source.calls, "the unload")

        await pilot.press("p")
        await until(pilot, lambda: ("pin", SMOL) in source.calls, "the pin")
        await until(pilot, lambda: residency_of(table_rows(app)[0])[-1] == "pinned", "the pinned row")
        await pilot.press("p")
        await until(pilot, lambda: ("unpin", SMOL) in source.calls, "the unpin")
        assert source.calls[-2:] == [("pin", SMOL), ("unpin", SMOL)]


async def test_overview_shows_the_budget_used() -> None:
    """The overview's queue line ends with the budget."""
    app = console(RecordingSource())
    async with app.run_test(size=(80, 24)) as pilot:
        queue = app.screen.query_one("#queue", Static)
        await until(pilot, lambda: "RAM" in str(queue.render()), "the budget")
        assert str(queue.render()).endswith("RAM 0.6/4.0 GiB, 1/2 loaded")


async def test_an_event_refreshes_the_models_screen_at_once() -> None:
    """With no poll running, a model event makes the shown models screen read the residency again; an
    event of another kind does not."""
    source = RecordingSource()
    app = console(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(table_rows(app)) == 2, "the models")
        await pilot.pause(0.2)
        before = source.residency_reads
        source.queue.put_nowait(SseEvent("keys.created", "9", "{}"))
        await pilot.pause(0.2)
        assert source.residency_reads == before
        source.queue.put_nowait(SseEvent("model.loaded", "10", '{"model": "smollm2-135m"}'))
        await until(pilot, lambda: source.residency_reads > before, "a refresh after the event")


async def test_the_console_reconnects_when_the_stream_drops() -> None:
    """Two drops in a row: the console subscribes again until the stream stays up, then refreshes."""
    source = RecordingSource(drops=2)
    app = console(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: source.subscriptions >= 3, "a third subscription", steps=200)
        assert isinstance(app.last_event, SseEvent)
        assert app.last_event.kind == "stream.opened"


class OverviewCounting(RecordingSource):
    """Counts the overview's reads."""

    overview_reads = 0

    async def overview(self) -> Overview:
        """The fixed overview, counted."""
        self.overview_reads += 1
        return await super().overview()


async def test_an_event_fetches_the_overview_but_adds_no_sample_to_the_history() -> None:
    """A model event reads the overview at once, yet the history gets no point from it: rates and medians
    need samples a poll apart (extra close ones kept the TTFT median from moving under load)."""
    source = OverviewCounting()
    app = ConsoleApp(source, poll_s=3600, history=MetricsHistory(), follow_events=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: source.overview_reads == 1 and source.subscriptions == 1, "the first poll")
        source.queue.put_nowait(SseEvent("model.loaded", "10", '{"model": "smollm2-135m"}'))
        await until(pilot, lambda: source.overview_reads == 2, "a read after the event")
        await pilot.pause(0.1)
        assert list(app.history.tokens_per_s) == []
        assert list(app.history.ttft_p50_ms) == []
