"""The `?` screen: every key of the console."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]Screens[/b]  1 overview  2 models  3 keys  4 audit  5 routes
         6 store  ? help  q quit
[b]Models[/b]   i import a file  e enable  d disable  v verify
         l load now  u unload (asks first)  p pin or unpin
         a versions: Enter activates one, b rolls back (both ask)
         x remove (asks first)  r refresh
[b]Keys[/b]     n new key (shown once)  x revoke (asks first)  r refresh
[b]Audit[/b]    / filter fields  Esc back to the table  r refresh
         since: 15m, 2h, 1d or a date such as 2026-01-31
[b]Routes[/b]   u/d move a link  a add a link  x remove a link
         s save (asks first)  r discard and refresh
[b]Store[/b]    u type the passphrase, Enter unlocks  l lock  r refresh

Arrows move in tables, Tab between fields; the mouse works too.
Enter on a table row shows the whole row, every column in full.
Changes apply at once (an activation once its checks pass): an
imported or enabled model serves within a second, a disabled or
removed one takes no new request; its worker stops once idle."""


class HelpScreen(ModalScreen[None]):
    """Keys of every screen; any of Esc, q or ? closes it."""

    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("escape,q,question_mark", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        """The key list."""
        with Vertical(classes="dialog", id="help"):
            yield Static(HELP)

    def action_close(self) -> None:
        """Back to the screen underneath."""
        self.dismiss(None)
