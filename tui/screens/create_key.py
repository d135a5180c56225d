"""Creating a key: ask for its name and role, then show the secret once."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Static

from tui.schemas import CreatedKey


class CreateKeyScreen(ModalScreen[tuple[str, str] | None]):
    """Name and role of a new key; Enter creates, Esc cancels."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape", "cancel", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        """A name field and an admin checkbox."""
        with Vertical(classes="dialog"):
            yield Static("New API key: who or what is it for? (Enter creates, Esc cancels)")
            yield Input(placeholder="name", id="name")
            yield Checkbox("admin role (can use the admin API)", id="admin")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the name field creates the key."""
        name = event.value.strip()
        if not name:
            self.notify("a key needs a name", severity="warning")
            return
        role = "admin" if self.query_one("#admin", Checkbox).value else "user"
        self.dismiss((name, role))

    def action_cancel(self) -> None:
        """Create nothing."""
        self.dismiss(None)


class KeyShownScreen(ModalScreen[None]):
    """The new key's secret, the only time it is shown."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape,enter", "close", "Close"),
    ]

    def __init__(self, created: CreatedKey) -> None:
        super().__init__()
        self.created = created

    def compose(self) -> ComposeResult:
        """The key on a line of its own, and the hint."""
        with Vertical(classes="dialog", id="key-shown"):
            created = f"Created {self.created.role} key {self.created.id} ({self.created.name}):"
            yield Static(created, markup=False)
            yield Static(self.created.key, id="secret", markup=False)
            yield Static("Copy it now: it is shown only this once. (Enter or Esc closes)", classes="hint")

    def action_close(self) -> None:
        """Back to the key list."""
        self.dismiss(None)
