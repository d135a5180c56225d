"""Routes and the store in the console, driven with Pilot against a real gateway with two real workers:
SmolLM2 imported encrypted as `primary` and registered plain as `backup`, one route `chain` over both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from textual.widgets import DataTable, Input, Static

from tests.e2e.server import RunningAppliance, cli, free_port, serve
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.screens.confirm import ConfirmScreen
from tui.screens.models import COLUMNS

SETTINGS = """
[server]
host = "127.0.0.1"
port = {port}
[workers]
threads = 1
context_length = 1024
[routes.chain]
links = ["primary", "backup"]
canned = "busy"
"""


@pytest.fixture(scope="module")
def two_links(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """A gateway whose route `chain` goes primary (encrypted) → backup (plain) → canned."""
    home = tmp_path_factory.mktemp("tui-routes") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.replace("{port}", str(port)))
    cli(home, "models", "import", str(model_path), "--name", "primary")
    cli(home, "models", "add", str(model_path), "--name", "backup")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, admin, user)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def served_by(gateway: RunningAppliance, route: str) -> str:
    """The model that serves a real chat request to `route` (the X-Served-Model header)."""
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.user_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    return raw.headers["x-served-model"]


def route_links(gateway: RunningAppliance, route: str) -> list[str]:
    """The links GET /admin/routes lists for `route`."""
    listed = httpx.get(
        f"{gateway.base_url}/admin/routes", headers=gateway.headers(gateway.admin_key), timeout=30
    ).json()
    links: list[str] = next(r["links"] for r in listed["data"] if r["name"] == route)
    return links


def console(gateway: RunningAppliance) -> ConsoleApp:
    """The console on the gateway with the admin key."""
    return ConsoleApp(AdminClient(gateway.base_url, gateway.admin_key), poll_s=0.2)


async def test_reordering_a_chain_changes_which_model_serves(two_links: RunningAppliance) -> None:
    """The overview shows the chain; on Routes, d moves primary down, s and y save, and backup serves."""
    assert served_by(two_links, "chain") == "primary"
    app = console(two_links)
    async with app.run_test(size=(120, 40)) as pilot:
        chains = app.screen.query_one("#chains", Static)
        await until(pilot, lambda: "chain: primary" in str(chains.render()), "the chain on the overview")
        assert "primary (closed) → backup (closed) → canned" in str(chains.render())

        await pilot.press("5")
        links: DataTable[str] = app.screen.query_one("#links", DataTable)
        await until(pilot, lambda: [r[1] for r in rows(links)] == ["primary", "backup"], "the links")
        await pilot.press("d")
        assert [r[1] for r in rows(links)] == ["backup", "primary"]
        assert "UNSAVED" in str(app.screen.query_one("#routes-status", Static).render())
        assert served_by(two_links, "chain") == "primary", "nothing changes before the save"

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        status = app.screen.query_one("#routes-status", Static)
        await until(pilot, lambda: "UNSAVED" not in str(status.render()), "the saved route")

    assert served_by(two_links, "chain") == "backup"
    assert route_links(two_links, "chain") == ["backup", "primary"]


async def test_models_show_encryption_and_verify_in_a_worker(two_links: RunningAppliance) -> None:
    """The encrypted column comes from the store; v verifies primary and says so; backup is refused."""
    app = console(two_links)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        table: DataTable[str] = app.screen.query_one("#models", DataTable)
        await until(pilot, lambda: table.row_count == 2, "both models")
        encrypted = {r[0]: r[COLUMNS.index("encrypted")] for r in rows(table)}
        assert encrypted == {"primary": "yes", "backup": "no"}

        table.move_cursor(row=[r[0] for r in rows(table)].index("primary"))
        await pilot.press("v")
        status = app.screen.query_one("#models-status", Static)
        await until(pilot, lambda: "primary verified" in str(status.render()), "the verification")

        table.move_cursor(row=[r[0] for r in rows(table)].index("backup"))
        await pilot.press("v")
        await until(pilot, lambda: "verify backup: failed" in str(status.render()), "the refusal")
        assert any("encrypted store" in n.message for n in app._notifications)


async def test_store_screen_in_key_file_mode_offers_no_passphrase(two_links: RunningAppliance) -> None:
    """The store screen shows key-file mode and counts the encrypted model; with nothing to unlock there
    is no passphrase field (issue 18), and u types nowhere. (Masking: test_store_unlock_pilot.py.)"""
    app = console(two_links)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        contents = app.screen.query_one("#store-contents", Static)
        await until(pilot, lambda: "1 encrypted" in str(contents.render()), "the store's contents")
        state = str(app.screen.query_one("#store-state", Static).render())
        assert "Mode:  key_file" in state
        assert "State: unlocked" in state
        field = app.screen.query_one("#passphrase", Input)
        assert not field.display
        assert "passphrase" not in app.export_screenshot()
        await pilot.press("u", *"hex")  # letters no store key uses
        assert field.value == ""
        assert not field.has_focus
