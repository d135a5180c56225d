"""The console app: six screens as modes, one poll of the gateway's overview, a banner when it is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.reactive import reactive

from appliance.wire.sse import SseEvent
from tui.client import AdminApiError, AdminSource, ConnectionLost
from tui.history import MetricsHistory
from tui.schemas import Overview
from tui.screens.audit import AuditScreen
from tui.screens.help import HelpScreen
from tui.screens.keys import KeysScreen
from tui.screens.models import ModelsScreen
from tui.screens.overview import OverviewScreen
from tui.screens.routes import RoutesScreen
from tui.screens.store import StoreScreen

RECONNECT_S = 1.0
"""Wait before opening the event stream again after it dropped (the poll raises the banner meanwhile)."""
REFRESHING_EVENTS = ("model.", "circuit.")
"""Events after which the overview is fetched at once rather than at the next poll."""


class ConsoleApp(App[None]):
    """`appliance tui`: overview, models, keys, audit, routes and store of one running gateway."""

    CSS_PATH = "app.tcss"
    TITLE = "appliance console"
    MODES = {  # noqa: RUF012 - Textual reads this class attribute as configuration
        "overview": OverviewScreen,
        "models": ModelsScreen,
        "keys": KeysScreen,
        "audit": AuditScreen,
        "routes": RoutesScreen,
        "store": StoreScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        # The footer has 80 columns for every hint: `?` first (ConsoleScreen puts it there), the six screens
        # as one `1-6 Screens` hint (the help lists them), and the screen's own keys in short words.
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("1", "switch_mode('overview')", "Screens", key_display="1-6", tooltip="1 overview … 6 store"),
        Binding("2", "switch_mode('models')", "Models", show=False),
        Binding("3", "switch_mode('keys')", "Keys", show=False),
        Binding("4", "switch_mode('audit')", "Audit", show=False),
        Binding("5", "switch_mode('routes')", "Routes", show=False),
        Binding("6", "switch_mode('store')", "Store", show=False),
        Binding("q", "quit", "Quit"),
    ]

    connected: reactive[bool] = reactive(True)
    latest: reactive[Overview | None] = reactive(None, always_update=True)
    last_event: reactive[SseEvent | None] = reactive(None, always_update=True)
    """The latest event of the gateway's stream; screens watch it to refresh what it changed."""

    def __init__(
        self,
        source: AdminSource,
        *,
        poll_s: float | None = 1.0,
        history: MetricsHistory | None = None,
        clock: Callable[[], float] = time.monotonic,
        where: str = "",
        follow_events: bool | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.follow_events = poll_s is not None if follow_events is None else follow_events
        """Whether to subscribe to the gateway's events (not over fixed data: snapshots stay still)."""
        self.history = history if history is not None else MetricsHistory()
        self.poll_s = poll_s
        self.clock = clock
        self.sub_title = where

    def on_mount(self) -> None:
        """Poll the overview now and then every `poll_s` seconds (never, for fixed snapshots)."""
        self.poll()
        if self.poll_s is not None:
            self.set_interval(self.poll_s, self.poll)
        if self.follow_events:
            self.follow()

    @work(exclusive=True, group="events")
    async def follow(self) -> None:
        """Follow the gateway's event stream for as long as the console runs, reconnecting when it drops;
        a gateway without one (404) leaves the console on its polls."""
        while True:
            try:
                async for event in self.source.events():
                    self.on_gateway_event(event)
            except ConnectionLost:
                pass
            except AdminApiError as error:
                if error.status == 404:
                    return
            await asyncio.sleep(RECONNECT_S)

    def on_gateway_event(self, event: SseEvent) -> None:
        """Tell the screens, and fetch the overview now if the event changes what it shows."""
        self.last_event = event
        if event.kind.startswith(REFRESHING_EVENTS):
            self.refresh_overview()

    @work(exclusive=True, group="refresh")
    async def refresh_overview(self) -> None:
        """Fetch the overview for an event, apart from `poll`: it must neither cancel a poll under way nor
        add a sample to the history (whose rates and medians need polls evenly spaced)."""
        try:
            overview = await self.source.overview()
        except (ConnectionLost, AdminApiError):
            return  # the next poll shows the banner or the error
        self.latest = overview

    @work(exclusive=True, group="poll")
    async def poll(self) -> None:
        """Fetch the overview; a failure flips `connected`, and the next success flips it back."""
        try:
            overview = await self.source.overview()
        except ConnectionLost:
            self.connected = False
            return
        except AdminApiError as error:
            self.connected = True
            self.notify(error.message, title="overview", severity="error")
            return
        if self.poll_s is not None:
            self.history.add(overview, self.clock())
        self.connected = True
        self.latest = overview

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every toast is literal text, whatever the caller asks: toasts carry the gateway's error messages
        and names (tui/literal.py), and screens call notify in many places."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def action_help(self) -> None:
        """Show the keys of every screen."""
        self.push_screen(HelpScreen())
