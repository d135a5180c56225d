"""Picking a model to add to a route's chain: a modal list that returns the chosen name or None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option


class AddLinkScreen(ModalScreen[str | None]):
    """The registered models not yet in the chain; Enter picks one, Esc cancels."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, route: str, candidates: list[str]) -> None:
        super().__init__()
        self.route = route
        self.candidates = candidates

    def compose(self) -> ComposeResult:
        """A line that says what happens, and the candidates."""
        with Vertical(classes="dialog", id="add-link"):
            yield Static(
                f"Add a link to {self.route}: it goes below the selected link. (Enter adds, Esc cancels)",
                markup=False,
            )
            options = (Option(Content(name), id=name) for name in self.candidates)  # names, not markup
            yield OptionList(*options, id="candidates")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter or a click on a model adds it."""
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        """Add nothing."""
        self.dismiss(None)
