"""The model registry: enable, disable and remove (with a confirmation)."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui.client import Model
from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen

COLUMNS = ("name", "aliases", "format", "quant", "size MB", "ctx", "status")


class ModelsScreen(ConsoleScreen):
    """The registry as a table; actions apply to the row under the cursor."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("e", "enable", "Enable"),
        Binding("d", "disable", "Disable"),
        Binding("x", "remove", "Remove"),
        Binding("r", "reload", "Refresh"),
    ]

    def body(self) -> ComposeResult:
        """The registry table and a status line."""
        yield Static("Models", classes="title")
        table: DataTable[str] = DataTable(id="models", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("Enabling and disabling apply at the gateway's next start.", classes="hint")

    def _selected(self) -> str | None:
        table: DataTable[str] = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        return str(table.get_row_at(table.cursor_row)[0])

    def show(self, models: list[Model]) -> None:
        """Fill the table, keeping the cursor where it was."""
        table: DataTable[str] = self.query_one("#models", DataTable)
        row = table.cursor_row
        table.clear()
        for m in models:
            table.add_row(
                m.name,
                ",".join(m.aliases) or "-",
                m.format,
                m.quantization,
                f"{m.size_bytes / 1e6:.1f}",
                str(m.context_length),
                m.status,
                key=m.name,
            )
        if models:
            table.move_cursor(row=min(row, len(models) - 1))

    async def fetch(self) -> None:
        """Fetch the registry."""
        models = await self.call(self.source.models(), "models")
        if models is not None:
            self.show(models)

    def action_reload(self) -> None:
        """Refresh from the gateway."""
        self.reload()

    @work(exclusive=True, group="models-change")
    async def _set_enabled(self, enabled: bool) -> None:
        name = self._selected()
        if name is None:
            return
        if not await self.act(self.source.set_model_enabled(name, enabled), "models"):
            return
        self.notify(f"{name} {'enabled' if enabled else 'disabled'} (applies at the next start)")
        self.reload()

    def action_enable(self) -> None:
        """Enable the selected model."""
        self._set_enabled(True)

    def action_disable(self) -> None:
        """Disable the selected model."""
        self._set_enabled(False)

    @work(exclusive=True, group="models-change")
    async def action_remove(self) -> None:
        """Ask, then remove the selected model from the registry (its file stays)."""
        name = self._selected()
        if name is None:
            return
        if not await self.app.push_screen_wait(ConfirmScreen(f"Remove model {name!r} from the registry?")):
            return
        if not await self.act(self.source.remove_model(name), "remove model"):
            return
        self.notify(f"removed {name}")
        self.reload()
