"""The model registry with the store's view: enable, disable, verify and remove (with a confirmation)."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui.client import Model, StoredModel
from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen

COLUMNS = ("name", "aliases", "format", "quant", "size MB", "encrypted", "ctx", "status")


class ModelsScreen(ConsoleScreen):
    """The registry as a table; actions apply to the row under the cursor."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("e", "enable", "Enable"),
        Binding("d", "disable", "Disable"),
        Binding("v", "verify", "Verify"),
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
        yield Static("", id="models-status", classes="hint")

    def _selected(self) -> str | None:
        table: DataTable[str] = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        return str(table.get_row_at(table.cursor_row)[0])

    def show(self, models: list[Model], stored: list[StoredModel] | None = None) -> None:
        """Fill the table (size and encryption from the store when it answered), keeping the cursor."""
        table: DataTable[str] = self.query_one("#models", DataTable)
        row = table.cursor_row
        table.clear()
        in_store = {s.name: s for s in stored or []}
        for m in models:
            entry = in_store.get(m.name)
            size = entry.size_bytes if entry else m.size_bytes
            encrypted = ("yes" if entry.encrypted else "no") if entry else "?"
            table.add_row(
                m.name,
                ",".join(m.aliases) or "-",
                m.format,
                m.quantization,
                f"{size / 1e6:.1f}",
                encrypted,
                str(m.context_length),
                m.status,
                key=m.name,
            )
        if models:
            table.move_cursor(row=min(row, len(models) - 1))

    async def fetch(self) -> None:
        """Fetch the registry."""
        models = await self.call(self.source.models(), "models")
        if models is None:
            return
        stored = await self.call(self.source.stored_models(), "store")
        self.show(models, stored)

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

    @work(group="models-verify")  # not exclusive: a second verify must not cancel the first
    async def action_verify(self) -> None:
        """Decrypt the selected model end to end in the gateway; the screen stays live meanwhile."""
        name = self._selected()
        if name is None:
            return
        status = self.query_one("#models-status", Static)
        status.update(f"verifying {name}: decrypting and hashing every chunk...")
        self.notify(f"verifying {name}...", title="verify")
        result = await self.call(self.source.verify_model(name), f"verify {name}")
        if result is None:
            status.update(f"verify {name}: failed (see the message)")
            return
        status.update(f"{name} verified, sha256 {result.sha256[:16]}...")
        self.notify(f"{name} verified: every chunk and the SHA-256 match", title="verify")
