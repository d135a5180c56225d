"""A model's versions in a modal table: pick one to activate, or roll back; the models screen switches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.literal import literal_row
from tui.schemas import ModelVersion

COLUMNS = ("", "version", "quant", "size MB", "sha256", "registered")


@dataclass(frozen=True)
class VersionChoice:
    """What the admin asked for: activate `version`, or (version None) roll back to the previous one."""

    name: str
    version: str | None

    @property
    def is_rollback(self) -> bool:
        """Whether this asks for the version that served before the current one."""
        return self.version is None


def version_row(version: ModelVersion) -> tuple[str, ...]:
    """One table row; `*` marks the serving version, as `appliance models versions` does."""
    registered = time.strftime("%Y-%m-%d %H:%M", time.gmtime(version.created)) if version.created else "-"
    return (
        "*" if version.active else "",
        version.version,
        version.quantization,
        f"{version.size_bytes / 1e6:.1f}",
        version.sha256[:12],
        registered,
    )


class VersionsScreen(ModalScreen[VersionChoice | None]):
    """Every version of one model; Enter or `a` activates the selected one, `b` rolls back, Esc closes."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("a", "activate", "Activate"),
        Binding("b", "roll_back", "Roll back"),
        Binding("escape", "cancel", "Close"),
    ]

    def __init__(self, name: str, versions: list[ModelVersion]) -> None:
        super().__init__()
        self.model_name = name
        self.versions = versions

    def compose(self) -> ComposeResult:
        """A line with the keys, the versions, and what activating does."""
        with Vertical(classes="dialog", id="versions-dialog"):
            yield Static(f"Versions of {self.model_name} (* serves now)", classes="title", markup=False)
            table: DataTable[Text] = DataTable(id="versions", cursor_type="row")
            table.add_columns(*COLUMNS)
            for version in self.versions:
                table.add_row(*literal_row(*version_row(version)), key=version.version)
            yield table
            yield Static(
                "Enter/a activate the selected version  b roll back  Esc close\n"
                "Activating loads it beside the serving one and switches only if its checks pass.",
                classes="hint",
            )

    def on_mount(self) -> None:
        """Start on the newest version: the usual one to activate."""
        table: DataTable[Text] = self.query_one("#versions", DataTable)
        table.focus()
        if self.versions:
            table.move_cursor(row=len(self.versions) - 1)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click) on a row activates it."""
        self.action_activate()

    def action_activate(self) -> None:
        """Ask for the selected version, unless it is the one serving already."""
        table: DataTable[Text] = self.query_one("#versions", DataTable)
        if not self.versions:
            return
        chosen = self.versions[table.cursor_row]
        if chosen.active:
            self.notify(f"version {chosen.version} is the one serving already", severity="warning")
            return
        self.dismiss(VersionChoice(self.model_name, chosen.version))

    def action_roll_back(self) -> None:
        """Ask for the version that served before the current one."""
        self.dismiss(VersionChoice(self.model_name, None))

    def action_cancel(self) -> None:
        """Change nothing."""
        self.dismiss(None)
