"""Importing a model: the path on the appliance of a GGUF file (a name, and whether to encrypt it) or of a
signed model bundle (`.bundle`: its models, names and versions come from the bundle, always encrypted)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Static

BUNDLE_SUFFIX = ".bundle"


@dataclass(frozen=True)
class ImportChoice:
    """What the admin asked to import."""

    path: str
    name: str
    encrypt: bool

    @property
    def bundle(self) -> bool:
        """Whether the path names a signed model bundle (`./build.sh bundle --profile models` writes them)."""
        return is_bundle(self.path)


def is_bundle(path: str) -> bool:
    """A model bundle by its extension: the file is on the appliance, and the gateway verifies it whole."""
    return PurePosixPath(path.strip()).suffix == BUNDLE_SUFFIX


def default_name(path: str) -> str:
    """The name `appliance models add` would give the file: its stem in lower case."""
    return PurePosixPath(path.strip()).stem.lower()


class ImportModelScreen(ModalScreen[ImportChoice | None]):
    """Path, name and encryption of a model to import; Enter in a field imports, Esc cancels."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape", "cancel", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        """Two fields and a checkbox."""
        with Vertical(classes="dialog", id="import-model"):
            yield Static(
                "Import a GGUF file or a signed model bundle (.bundle) that is on the appliance. "
                "(Enter imports, Esc cancels)"
            )
            yield Input(placeholder="path, e.g. /srv/models/model.Q4_K_M.gguf", id="import-path")
            yield Input(placeholder="name (empty: from the file name)", id="import-name")
            yield Checkbox("encrypt into the store (the file itself is left alone)", value=True, id="encrypt")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in either field imports, when there is a path."""
        path = self.query_one("#import-path", Input).value.strip()
        if not path:
            self.notify("give the path of a GGUF file or model bundle on the appliance", severity="warning")
            self.query_one("#import-path", Input).focus()
            return
        name = self.query_one("#import-name", Input).value.strip() or default_name(path)
        self.dismiss(ImportChoice(path, name, self.query_one("#encrypt", Checkbox).value))

    def action_cancel(self) -> None:
        """Import nothing."""
        self.dismiss(None)
