"""What every console screen shares: header, connection banner, footer, and error handling for calls."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar, cast

from textual import work
from textual.app import ComposeResult
from textual.binding import ActiveBinding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from appliance.wire.sse import SseEvent
from tui.client import STREAM_OPENED, AdminApiError, AdminSource, ConnectionLost
from tui.screens.row import RowScreen, row_fields

if TYPE_CHECKING:
    from tui.app import ConsoleApp

T = TypeVar("T")


class ConnectionBanner(Static):
    """A red line that says the gateway does not answer; hidden while it does."""

    def on_mount(self) -> None:
        """Follow the app's connection state."""
        self.watch(self.app, "connected", self._show)

    def _show(self, connected: bool) -> None:
        self.update("Connection to the gateway lost: retrying every second...")
        self.display = not connected


class ConsoleScreen(Screen[None]):
    """A screen with the common frame; subclasses compose their body and implement `reload`."""

    REFRESH_ON: tuple[str, ...] = ()
    """Kinds (or prefixes) of the gateway's events after which the screen, while shown, re-reads its data;
    it also does whenever the event stream (re)opens, since events may have been missed meanwhile."""

    def compose(self) -> ComposeResult:
        """Header, banner, the screen's body, footer."""
        yield Header()
        yield ConnectionBanner(id="banner")
        yield from self.body()
        # Compact, and without the command palette's hint (ctrl+p still opens it): every screen's hints
        # fit in 80 columns, which tests/tui/test_footer.py checks.
        yield Footer(compact=True, show_command_palette=False)

    @property
    def active_bindings(self) -> dict[str, ActiveBinding]:
        """The keys in the footer's order: help first, then this screen's own, then the app's others.

        Textual lists the focused widget's and the screen's keys before the app's, so a footer that ran
        out of columns cut `? Help` first; now it is the one hint that is always shown."""
        bindings = super().active_bindings
        order = sorted(
            bindings.items(),
            key=lambda item: (item[1].binding.action != "help", item[1].node is self.app),
        )
        return dict(order)

    def body(self) -> ComposeResult:
        """The screen's own widgets."""
        yield from ()

    @property
    def console(self) -> ConsoleApp:
        """The app, typed."""
        return cast("ConsoleApp", self.app)

    @property
    def source(self) -> AdminSource:
        """Where data comes from (the gateway's admin API)."""
        return self.console.source

    def on_mount(self) -> None:
        """Load once, and again whenever the connection comes back."""
        self.watch(self.app, "connected", self._reconnected, init=False)
        if self.REFRESH_ON:
            self.watch(self.app, "last_event", self._event_seen, init=False)
        self.reload()

    def _event_seen(self, event: SseEvent | None) -> None:
        if event is None or not self.is_current:
            return  # a screen not shown reads its data when it comes back
        if event.kind == STREAM_OPENED or event.kind.startswith(self.REFRESH_ON):
            self.reload()

    def on_screen_resume(self) -> None:
        """Coming back to a screen shows fresh data."""
        if self.is_mounted:
            self.reload()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click) on a row of any of the screen's tables opens the row whole: a table cuts
        long cells (key names, audit targets, errors) to fit 80 columns."""
        table = event.data_table
        if table.row_count == 0:
            return
        title = f"{table.id or 'table'}: row {event.cursor_row + 1} of {table.row_count}"
        self.app.push_screen(RowScreen(title, row_fields(table, event.cursor_row)))

    def _reconnected(self, connected: bool) -> None:
        if connected:
            self.reload()

    def reload(self) -> None:
        """Fetch the screen's data in a worker, so the screen never waits on the network."""
        self._fetch_in_worker()

    @work(exclusive=True, group="fetch")
    async def _fetch_in_worker(self) -> None:
        await self.fetch()

    async def fetch(self) -> None:
        """Fetch and show the screen's data; screens with data override it."""

    async def call(self, awaitable: Awaitable[T], what: str) -> T | None:
        """Await one API call; a lost connection raises the banner and an API error becomes a toast."""
        try:
            result = await awaitable
        except ConnectionLost:
            self.console.connected = False
            return None
        except AdminApiError as error:
            self.notify(error.message, title=what, severity="error")
            return None
        self.console.connected = True
        return result

    async def act(self, awaitable: Awaitable[None], what: str) -> bool:
        """Like `call`, for a change that returns nothing: whether it went through."""
        done = await self.call(_true_after(awaitable), what)
        return done is True


async def _true_after(awaitable: Awaitable[None]) -> bool:
    await awaitable
    return True
