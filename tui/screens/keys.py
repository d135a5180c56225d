"""API keys: list, create (shown once), revoke (with a confirmation)."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui.literal import literal_row
from tui.schemas import Key
from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.create_key import CreateKeyScreen, KeyShownScreen

COLUMNS = ("id", "role", "state", "created", "last used", "name")


class KeysScreen(ConsoleScreen):
    """Every key; actions apply to the row under the cursor."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("n", "create", "New key"),
        Binding("x", "revoke", "Revoke"),
        Binding("r", "reload", "Reload"),
    ]

    def body(self) -> ComposeResult:
        """The key table."""
        yield Static("API keys", classes="title")
        table: DataTable[Text] = DataTable(id="keys", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table

    def show(self, keys: list[Key]) -> None:
        """Fill the table, keeping the cursor where it was."""
        table: DataTable[Text] = self.query_one("#keys", DataTable)
        row = table.cursor_row
        table.clear()
        for k in keys:
            last = k.last_used_at[:19].replace("T", " ") if k.last_used_at else "never"
            state = "revoked" if k.revoked else "active"
            created = k.created_at[:19].replace("T", " ")
            table.add_row(*literal_row(k.id, k.role, state, created, last, k.name), key=k.id)
        if keys:
            table.move_cursor(row=min(row, len(keys) - 1))

    async def fetch(self) -> None:
        """Fetch the keys."""
        keys = await self.call(self.source.keys(), "keys")
        if keys is not None:
            self.show(keys)

    def action_reload(self) -> None:
        """Refresh from the gateway."""
        self.reload()

    @work(exclusive=True, group="keys-change")
    async def action_create(self) -> None:
        """Ask for a name and role, create the key, show its secret once."""
        wanted = await self.app.push_screen_wait(CreateKeyScreen())
        if wanted is None:
            return
        name, role = wanted
        created = await self.call(self.source.create_key(name, role), "create key")
        if created is None:
            return
        self.reload()
        await self.app.push_screen_wait(KeyShownScreen(created))

    @work(exclusive=True, group="keys-change")
    async def action_revoke(self) -> None:
        """Ask, then revoke the selected key."""
        table: DataTable[Text] = self.query_one("#keys", DataTable)
        if table.row_count == 0:
            return
        key_id, _, state, _, _, name = (cell.plain for cell in table.get_row_at(table.cursor_row))
        if state == "revoked":
            self.notify(f"{key_id} is revoked already")
            return
        if not await self.app.push_screen_wait(ConfirmScreen(f"Revoke key {key_id} ({name})?")):
            return
        if not await self.act(self.source.revoke_key(str(key_id)), "revoke key"):
            return
        self.notify(f"revoked {key_id}")
        self.reload()
