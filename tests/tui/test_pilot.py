"""Each screen's main action, driven with Pilot against a real running gateway."""

from __future__ import annotations

import httpx
from textual.widgets import DataTable, Static

from tests.e2e.server import RunningAppliance
from tests.tui.helpers import Relay, rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.screens.create_key import KeyShownScreen


def console(gateway: RunningAppliance, url: str | None = None) -> ConsoleApp:
    """The console on the gateway (or on `url`) with the admin key."""
    return ConsoleApp(AdminClient(url or gateway.base_url, gateway.admin_key), poll_s=0.2)


def status_of(gateway: RunningAppliance, key: str) -> int:
    """What /v1/models answers to `key`."""
    return httpx.get(f"{gateway.base_url}/v1/models", headers=gateway.headers(key), timeout=30).status_code


def registered_models(gateway: RunningAppliance) -> list[str]:
    """The names /admin/models lists."""
    listed = httpx.get(
        f"{gateway.base_url}/admin/models", headers=gateway.headers(gateway.admin_key), timeout=30
    ).json()
    return [m["name"] for m in listed["data"]]


async def test_created_key_authenticates_and_revoked_key_fails(gateway: RunningAppliance) -> None:
    """n creates a key that works at once; x, y revokes it and the next request gets 401."""
    app = console(gateway)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: app.screen.query_one("#keys", DataTable).row_count >= 2, "the keys")
        await pilot.press("n", *"pilot-key", "enter")
        await until(pilot, lambda: isinstance(app.screen, KeyShownScreen), "the new key")
        shown = app.screen
        assert isinstance(shown, KeyShownScreen)
        secret = str(shown.query_one("#secret", Static).render())
        assert secret == shown.created.key
        assert status_of(gateway, secret) == 200

        await pilot.press("enter")
        table: DataTable[str] = app.screen.query_one("#keys", DataTable)
        key_id = shown.created.id
        await until(pilot, lambda: any(r[0] == key_id for r in rows(table)), "the new key in the list")
        table.move_cursor(row=[r[0] for r in rows(table)].index(key_id))
        await pilot.press("x")
        await pilot.press("y")
        await until(
            pilot, lambda: [key_id, "revoked"] in [r[:3:2] for r in rows(table)], "the key as revoked"
        )
        assert status_of(gateway, secret) == 401


async def test_models_disable_and_remove(gateway: RunningAppliance) -> None:
    """d disables the unserved model, x asks and removes it; a served model is refused and stays."""
    app = console(gateway)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        table: DataTable[str] = app.screen.query_one("#models", DataTable)
        await until(pilot, lambda: any(r[0] == "spare" for r in rows(table)), "the spare model")
        names = [r[0] for r in rows(table)]

        table.move_cursor(row=names.index("smollm2-135m"))
        await pilot.press("x", "y")
        await pilot.press("r")
        await until(pilot, lambda: len(app._notifications) > 0, "the refusal")
        assert any("disable it" in n.message for n in app._notifications)
        assert "smollm2-135m" in [r[0] for r in rows(table)]

        table.move_cursor(row=names.index("spare"))
        await pilot.press("d")
        await until(pilot, lambda: ["spare", "disabled"] in [r[0:3:2] for r in rows(table)], "disabled")
        table.move_cursor(row=[r[0] for r in rows(table)].index("spare"))
        await pilot.press("x", "y")
        await until(pilot, lambda: "spare" not in [r[0] for r in rows(table)], "spare removed")

    # Other tests register models on this shared gateway too: only what this test did is checked.
    assert "spare" not in registered_models(gateway)
    assert "smollm2-135m" in registered_models(gateway)


async def test_overview_shows_engines_and_traffic(gateway: RunningAppliance) -> None:
    """The overview lists the ready engine and counts a request made while it watches."""
    app = console(gateway)
    async with app.run_test(size=(80, 24)) as pilot:
        table: DataTable[str] = app.screen.query_one("#engines", DataTable)
        await until(
            pilot, lambda: ["smollm2-135m", "1", "ready"] in [r[:3] for r in rows(table)], "the engine"
        )
        before = app.latest.requests_total if app.latest else 0.0
        assert status_of(gateway, gateway.user_key) == 200
        await until(
            pilot, lambda: app.latest is not None and app.latest.requests_total > before, "the request"
        )
        assert "CPU" in str(app.screen.query_one("#hardware", Static).render())


async def test_audit_filters_by_action(gateway: RunningAppliance) -> None:
    """Typing an action narrows the log to it, newest first."""
    app = console(gateway)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        table: DataTable[str] = app.screen.query_one("#audit", DataTable)
        await until(pilot, lambda: table.row_count > 0, "the audit log")
        await pilot.press("slash", "tab", *"keys.create")
        await until(pilot, lambda: all(r[2] == "keys.create" for r in rows(table)), "only keys.create")
        assert table.row_count >= 2
        times = [r[0] for r in rows(table)]
        assert times == sorted(times, reverse=True)


async def test_lost_connection_shows_banner_and_reconnects(gateway: RunningAppliance) -> None:
    """With the gateway unreachable the banner shows; when it answers again the banner goes by itself."""
    relay = Relay(gateway.port)
    await relay.start()
    app = console(gateway, f"http://127.0.0.1:{relay.port}")
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: app.latest is not None and not banner.display, "a connected overview")
        await relay.stop()
        await until(pilot, lambda: bool(banner.display), "the banner")
        assert "lost" in str(banner.render())
        await pilot.press("3")  # a screen's own call also meets the dead connection, without a traceback
        await pilot.pause(0.3)
        await relay.start(relay.port)
        await until(pilot, lambda: app.connected, "the reconnection")
        keys_banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: not keys_banner.display, "the banner gone")
        await until(pilot, lambda: app.screen.query_one("#keys", DataTable).row_count >= 2, "the keys")
    await relay.stop()
