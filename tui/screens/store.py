"""The encrypted store: lock state and mode, unlocking with a (masked) passphrase, locking again."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from tui.client import AdminApiError, ConnectionLost
from tui.schemas import StoredModel
from tui.screens.base import ConsoleScreen

NOT_FOUND = 404


def status_text(status: dict[str, Any] | None) -> str:
    """The store's mode and lock state in words; None when the gateway has no status endpoint."""
    if status is None:
        return "Lock state: not reported by this gateway (it has no /admin/store/status yet)."
    locked = status.get("locked")
    state = "LOCKED" if locked else "unlocked" if locked is not None else "unknown"
    lines = [f"Mode:  {status.get('mode', 'unknown')}", f"State: {state}"]
    for key, value in sorted(status.items()):
        if key in {"mode", "locked"}:
            continue
        shown = (", ".join(map(str, value)) or "none") if isinstance(value, list) else str(value)
        lines.append(f"{key.replace('_', ' ').capitalize()}: {shown}")
    if is_passphrase_mode(status):
        lines.append("Unlock: press u, type the passphrase, Enter." if locked else "Lock again: press l.")
    else:
        lines.append("The store's key comes from its key file: it opens by itself at start.")
    return "\n".join(lines)


def is_passphrase_mode(status: dict[str, Any] | None) -> bool:
    """Whether unlocking and locking apply: to a passphrase-mode store, or one whose mode is unknown."""
    return status is None or status.get("mode") in {"passphrase", None}


def contents_text(stored: list[StoredModel]) -> str:
    """How many models are encrypted, and their sizes in and out of the store."""
    encrypted = [m for m in stored if m.encrypted]
    plain = sum(m.size_bytes for m in encrypted) / 1e6
    on_disk = sum(m.stored_bytes for m in encrypted) / 1e6
    return (
        f"Models: {len(stored)} registered, {len(encrypted)} encrypted "
        f"({plain:.1f} MB of weights, {on_disk:.1f} MB in the store)"
    )


class StoreScreen(ConsoleScreen):
    """Lock state, contents, and the passphrase field (its text is never shown)."""

    # The passphrase field must not take the focus on arrival: digits would type into it, not switch screens.
    AUTO_FOCUS = ""
    BINDINGS = [  # noqa: RUF012 - Textual reads this class attribute as configuration
        Binding("u", "focus_passphrase", "Unlock"),
        Binding("l", "lock", "Lock"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "leave_passphrase", "Back", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, Any] | None = None
        self.fetched = False
        """Whether a status (or its absence: an older gateway) has come back yet."""

    def body(self) -> ComposeResult:
        """State, contents, the masked passphrase field and a hint."""
        yield Static("Model store", classes="title")
        # The status is the gateway's dict, keys and values shown as they are.
        yield Static("loading...", id="store-state", classes="panel", markup=False)
        yield Static("", id="store-contents", classes="panel", markup=False)
        # Hidden until the status says passphrase mode: a key-file store has nothing to type in.
        yield Input(placeholder="passphrase (u, then Enter to unlock)", password=True, id="passphrase")
        yield Static(
            "In passphrase mode encrypted models cannot start until the store is unlocked.",
            id="passphrase-hint",
            classes="hint",
        )

    def on_mount(self) -> None:
        """Nothing to unlock is shown before the status says which mode the store is in."""
        self._show_mode()
        super().on_mount()

    def _show_mode(self) -> None:
        """The passphrase field, its hint and the u and l keys only where they apply."""
        applies = self._unlocking_applies()
        self.query_one("#passphrase", Input).display = applies
        self.query_one("#passphrase-hint", Static).display = applies
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Unlock and lock are offered (footer and keys) only for a passphrase-mode store."""
        if action in {"focus_passphrase", "lock"}:
            return self._unlocking_applies()
        return True

    def _unlocking_applies(self) -> bool:
        return self.fetched and is_passphrase_mode(self.status)

    async def fetch(self) -> None:
        """The lock state (when the gateway reports it) and the store's contents."""
        try:
            self.status = await self.source.store_status()
        except AdminApiError as error:
            if error.status != NOT_FOUND:
                self.notify(error.message, title="store", severity="error")
            self.status = None
        except ConnectionLost:
            self.console.connected = False
            return
        self.fetched = True
        self.query_one("#store-state", Static).update(status_text(self.status))
        self._show_mode()
        stored = await self.call(self.source.stored_models(), "store")
        if stored is not None:
            self.query_one("#store-contents", Static).update(contents_text(stored))

    def action_reload(self) -> None:
        """Refresh from the gateway."""
        self.reload()

    def action_focus_passphrase(self) -> None:
        """Put the cursor in the passphrase field."""
        self.query_one("#passphrase", Input).focus()

    def action_leave_passphrase(self) -> None:
        """Leave the field (and clear it) without unlocking."""
        field = self.query_one("#passphrase", Input)
        field.value = ""
        self.set_focus(None)

    @on(Input.Submitted, "#passphrase")
    def _submitted(self, event: Input.Submitted) -> None:
        passphrase = event.value
        event.input.value = ""  # the passphrase does not stay on screen or in the widget
        self.set_focus(None)
        if passphrase:
            self._unlock(passphrase)

    @work(exclusive=True, group="store-change")
    async def _unlock(self, passphrase: str) -> None:
        if await self.call(self.source.unlock_store(passphrase), "unlock") is not None:
            self.notify("store unlocked", title="store")
        self.reload()

    @work(exclusive=True, group="store-change")
    async def action_lock(self) -> None:
        """Lock the store again."""
        if await self.call(self.source.lock_store(), "lock") is not None:
            self.notify("store locked", title="store")
        self.reload()
