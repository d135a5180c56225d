"""Issue 18's console items over the fixed source: every footer fits 80 columns with `? Help` first, Enter
opens any row whole, the audit filter finds a key's creation by its id, and a key-file store offers no
passphrase."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static
from textual.widgets._footer import FooterKey

from tests.tui.fixed import AUDIT, KEYS, FixedSource, fixed_app
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.history import MetricsHistory
from tui.schemas import Key
from tui.screens.row import RowScreen

WIDTH = 80
SCREENS = {"overview": "1", "models": "2", "keys": "3", "audit": "4", "routes": "5", "store": "6"}
LONG_NAME = "billing app of the accounts department, second floor, [b]room 204[/b], ask for Kim"


def footer_keys(app: ConsoleApp) -> list[FooterKey]:
    """The footer's hints, left to right."""
    return sorted(app.screen.query(FooterKey), key=lambda key: key.region.x)


@pytest.mark.parametrize("screen", list(SCREENS))
async def test_every_hint_fits_80_columns_with_help_first(screen: str) -> None:
    """At 80x24 each screen's hints all end inside the footer, and the first is `? Help`."""
    app = fixed_app()
    async with app.run_test(size=(WIDTH, 24)) as pilot:
        await pilot.press(SCREENS[screen])
        await until(pilot, lambda: app.current_mode == screen and bool(footer_keys(app)), "the footer")
        await pilot.pause()
        keys = footer_keys(app)
        assert (keys[0].key_display, keys[0].description) == ("?", "Help")
        assert all(key.region.x >= 0 and key.region.right <= WIDTH for key in keys), [
            (key.key_display, key.description, key.region) for key in keys
        ]
        assert "Quit" in [key.description for key in keys]  # the last hint is there too


class LongNameSource(FixedSource):
    """The fixed keys, one with a name far wider than the table's column at 80 columns."""

    async def keys(self) -> list[Key]:
        """A long, markup-looking name."""
        return [KEYS[0], Key("0f9e8d7c6b5a", LONG_NAME, "user", "2026-01-30T09:05:00", None)]


def row_shown(app: ConsoleApp) -> str:
    """The opened row's text."""
    return str(app.screen.query_one("#row-text", Static).render())


async def test_enter_opens_a_cut_row_whole_and_literal() -> None:
    """The key's name is cut in the table at 80 columns; Enter shows it whole, brackets as brackets."""
    app = ConsoleApp(LongNameSource(), poll_s=None, history=MetricsHistory())
    async with app.run_test(size=(WIDTH, 24)) as pilot:
        await pilot.press("3")
        table: DataTable[Any] = app.screen.query_one("#keys", DataTable)
        await until(pilot, lambda: table.row_count == 2, "the keys")
        await pilot.pause()
        assert LONG_NAME not in "".join(table.render_line(y).text for y in range(table.size.height))
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, RowScreen), "the opened row")
        text = row_shown(app)
        assert LONG_NAME in " ".join(text.split())  # it may wrap, never is it cut or styled
        assert "0f9e8d7c6b5a" in text
        assert "name" in text
        await pilot.press("escape")
        await until(
            pilot, lambda: app.current_mode == "keys" and not isinstance(app.screen, RowScreen), "keys"
        )

        await pilot.press("4")
        audit: DataTable[Any] = app.screen.query_one("#audit", DataTable)
        await until(pilot, lambda: audit.row_count == len(AUDIT), "the audit log")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RowScreen), "the opened audit row")
        assert "POST /v1/chat/completions" in row_shown(app)
        assert "192.0.2.7" in row_shown(app)


async def test_filtering_by_a_key_id_finds_the_row_that_created_it() -> None:
    """0f9e8d7c6b5a was created by the admin key: the row names it as target, not as actor."""
    app = fixed_app()
    async with app.run_test(size=(WIDTH, 24)) as pilot:
        await pilot.press("4")
        table: DataTable[Any] = app.screen.query_one("#audit", DataTable)
        await until(pilot, lambda: table.row_count == len(AUDIT), "the audit log")
        await pilot.press("slash", *"0f9e8d")
        await until(pilot, lambda: table.row_count == 1, "one row")
        actor, action, target = (rows(table)[0][i] for i in (1, 2, 5))
        assert (actor, action, target) == ("a1b2c3d4e5f6", "keys.create", "0f9e8d7c6b5a")


class KeyFileSource(FixedSource):
    """A store whose key comes from its key file."""

    async def store_status(self) -> dict[str, Any]:
        """Key-file mode: never locked."""
        return {"mode": "key_file", "locked": False, "encrypted_models": ["smollm2-135m"]}


async def test_a_key_file_store_offers_no_passphrase() -> None:
    """Key-file mode: no passphrase field, no hint about it, no u or l in the footer, u types nothing."""
    app = ConsoleApp(KeyFileSource(), poll_s=None, history=MetricsHistory())
    async with app.run_test(size=(WIDTH, 24)) as pilot:
        await pilot.press("6")
        state = app.screen.query_one("#store-state", Static)
        await until(pilot, lambda: "key_file" in str(state.render()), "the store's mode")
        await pilot.pause()
        assert not app.screen.query_one("#passphrase", Input).display
        assert not app.screen.query_one("#passphrase-hint", Static).display
        assert "nothing to unlock" not in str(state.render())
        assert [k.key_display for k in footer_keys(app)] == ["?", "r", "1-6", "q"]
        await pilot.press("u", "x")
        assert app.screen.query_one("#passphrase", Input).value == ""


async def test_a_passphrase_store_offers_unlock() -> None:
    """Passphrase mode (the fixed source's): the field and the u and l keys are there."""
    app = fixed_app()
    async with app.run_test(size=(WIDTH, 24)) as pilot:
        await pilot.press("6")
        field = app.screen.query_one("#passphrase", Input)
        await until(pilot, lambda: bool(field.display), "the passphrase field")
        await pilot.pause()
        assert [k.key_display for k in footer_keys(app)][:3] == ["?", "u", "l"]
