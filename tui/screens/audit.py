"""The audit log, newest first, filtered by who (key id, target or client address), action and time."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Static

from tui.audit_filter import AuditFilter, parse_since
from tui.literal import literal_row
from tui.schemas import AuditEvent
from tui.screens.base import ConsoleScreen

COLUMNS = ("time", "actor", "action", "outcome", "client", "target", "detail")


class AuditScreen(ConsoleScreen):
    """The newest events of the audit log; the filter fields narrow them as you type."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "table", "Table", show=False),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.events: list[AuditEvent] = []

    def body(self) -> ComposeResult:
        """Three filter fields over the table."""
        with Horizontal(id="filters"):
            yield Input(placeholder="key id, target, addr", id="actor")
            yield Input(placeholder="action", id="action")
            yield Input(placeholder="since: 15m, 2h, 2026-01-31", id="since")
        yield Static("", id="audit-status", markup=False)  # may quote what the admin typed
        table: DataTable[Text] = DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table

    def on_mount(self) -> None:
        """Start in the table, so the screen keys work at once."""
        super().on_mount()
        self.query_one("#audit", DataTable).focus()

    def _filter(self) -> AuditFilter | None:
        since_text = self.query_one("#since", Input).value
        try:
            since = parse_since(since_text, datetime.now(UTC))
        except ValueError:
            self.query_one("#audit-status", Static).update(f"cannot read the time {since_text!r}")
            return None
        return AuditFilter(
            self.query_one("#actor", Input).value, self.query_one("#action", Input).value, since
        )

    def show(self) -> None:
        """Fill the table with the events that pass the filter."""
        wanted = self._filter()
        if wanted is None:
            return
        shown = wanted.apply(self.events)
        self.query_one("#audit-status", Static).update(f"{len(shown)} of {len(self.events)} events")
        table: DataTable[Text] = self.query_one("#audit", DataTable)
        table.clear()
        for e in shown:
            when = e.time[:19].replace("T", " ")
            # The target is often a request path, i.e. whatever a client chose to send: literal cells only.
            row = (when, e.actor_key_id or "-", e.action, e.outcome, e.client or "-", e.target, e.detail)
            table.add_row(*literal_row(*row))

    def on_input_changed(self, _event: Input.Changed) -> None:
        """Filter as the admin types."""
        self.show()

    async def fetch(self) -> None:
        """Fetch the newest events."""
        events = await self.call(self.source.audit(), "audit")
        if events is not None:
            self.events = events
            self.show()

    def action_reload(self) -> None:
        """Refresh from the gateway."""
        self.reload()

    def action_filter(self) -> None:
        """Jump to the first filter field."""
        self.query_one("#actor", Input).focus()

    def action_table(self) -> None:
        """Leave the filter fields for the table."""
        self.query_one("#audit", DataTable).focus()
