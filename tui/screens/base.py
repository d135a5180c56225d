"""What every console screen shares: header, connection banner, footer, and error handling for calls."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar, cast

from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tui.client import AdminApiError, AdminSource, ConnectionLost

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

    COMPACT_FOOTER = False
    """Whether the footer packs its keys tighter: for screens whose keys would not all fit at 80 columns."""

    def compose(self) -> ComposeResult:
        """Header, banner, the screen's body, footer."""
        yield Header()
        yield ConnectionBanner(id="banner")
        yield from self.body()
        yield Footer(compact=self.COMPACT_FOOTER)

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
        self.reload()

    def on_screen_resume(self) -> None:
        """Coming back to a screen shows fresh data."""
        if self.is_mounted:
            self.reload()

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
