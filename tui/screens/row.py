"""A table row opened whole: every column's full text, for cells the table cut to fit the screen."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static


def cell_text(cell: object) -> str:
    """A cell's whole text, without its styles."""
    return cell.plain if isinstance(cell, Text) else str(cell)


def row_fields(table: DataTable[object], row: int) -> list[tuple[str, str]]:
    """(column label, whole cell text) of one row of `table`, in column order."""
    labels = [cell_text(column.label) for column in table.ordered_columns]
    return list(zip(labels, (cell_text(cell) for cell in table.get_row_at(row)), strict=False))


def row_text(fields: list[tuple[str, str]]) -> Text:
    """One line per column, the label in bold; the values stay literal (they are the gateway's text)."""
    width = max((len(label) for label, _ in fields), default=0)
    text = Text()
    for index, (label, value) in enumerate(fields):
        if index:
            text.append("\n")
        text.append(f"{label or '#'}".ljust(width), style="bold")
        text.append("  ")
        text.append(value)  # appended as text, never parsed: `[b]` stays `[b]`
    return text


class RowScreen(ModalScreen[None]):
    """Enter on a row of any console table: the row's every column in full; Esc, Enter or q closes."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape,enter,q", "close", "Close"),
    ]

    def __init__(self, title: str, fields: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.fields = fields

    def compose(self) -> ComposeResult:
        """A title, the fields (scrolling when long) and how to close."""
        with Vertical(classes="dialog", id="row-dialog"):
            yield Static(self.title_text, classes="title", markup=False)
            with VerticalScroll(id="row-fields"):
                yield Static(row_text(self.fields), id="row-text")
            yield Static("Esc, Enter or q closes.", classes="hint")

    def action_close(self) -> None:
        """Back to the table."""
        self.dismiss(None)
