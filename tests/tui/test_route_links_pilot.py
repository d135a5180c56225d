"""Adding and removing links of a route in the console, against the real gateway of `conftest.gateway`:
each edit is saved through the admin API and a real chat request shows the routing change."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from textual.pilot import Pilot
from textual.widgets import DataTable, OptionList, Static

from tests.e2e.server import RunningAppliance, cli
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.screens.add_link import AddLinkScreen
from tui.screens.confirm import ConfirmScreen

SERVED = "smollm2-135m"  # the model the gateway fixture serves
CANNED = "canned"  # what X-Served-Model says when a route's canned answer replied


def served_by(gateway: RunningAppliance, route: str) -> str:
    """The model that serves a real chat request to `route` (the X-Served-Model header)."""
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.user_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    return raw.headers["x-served-model"]


def put_route(gateway: RunningAppliance, name: str, links: list[str]) -> None:
    """Set a route up through the admin API, with a canned answer as its last resort."""
    response = httpx.put(
        f"{gateway.base_url}/admin/routes/{name}",
        json={"links": links, "canned": "busy"},
        headers=gateway.headers(gateway.admin_key),
        timeout=30,
    )
    assert response.status_code == 200, response.text


async def open_route(pilot: Pilot[None], app: ConsoleApp, name: str) -> DataTable[str]:
    """Go to the routes screen, put the cursor on route `name` and return the links table."""
    await pilot.press("5")
    routes: DataTable[str] = app.screen.query_one("#routes", DataTable)
    await until(pilot, lambda: any(r[0] == name for r in rows(routes)), f"route {name}")
    routes.move_cursor(row=[r[0] for r in rows(routes)].index(name))
    await pilot.pause()
    return app.screen.query_one("#links", DataTable)


async def save(pilot: Pilot[None], app: ConsoleApp) -> None:
    """s, then y on the confirmation, and wait until the draft is gone."""
    await pilot.press("s")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    await pilot.press("y")
    status = app.screen.query_one("#routes-status", Static)
    await until(pilot, lambda: "UNSAVED" not in str(status.render()), "the saved route")


def console(gateway: RunningAppliance) -> ConsoleApp:
    """The console on the gateway with the admin key."""
    return ConsoleApp(AdminClient(gateway.base_url, gateway.admin_key), poll_s=0.2)


async def test_an_added_link_serves_when_the_first_link_has_no_worker(
    gateway: RunningAppliance, model_path: Path
) -> None:
    """Route `grow` starts with a registered (disabled) model no worker serves, so the canned answer replies;
    a adds the served model below it, and after the save that model answers."""
    # Registered disabled: listed and linkable, but no worker serves it.
    cli(gateway.home, "models", "add", str(model_path), "--name", "idle-link", "--disabled")
    put_route(gateway, "grow", ["idle-link"])
    assert served_by(gateway, "grow") == CANNED

    app = console(gateway)
    async with app.run_test(size=(120, 40)) as pilot:
        links = await open_route(pilot, app, "grow")
        await until(pilot, lambda: [r[1] for r in rows(links)] == ["idle-link"], "the links of grow")
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AddLinkScreen), "the model picker")
        picker = app.screen.query_one("#candidates", OptionList)
        names = [str(picker.get_option_at_index(i).id) for i in range(picker.option_count)]
        assert SERVED in names
        assert "idle-link" not in names, "a model already in the chain is not offered again"
        picker.highlighted = names.index(SERVED)
        await pilot.press("enter")
        await until(pilot, lambda: [r[1] for r in rows(links)] == ["idle-link", SERVED], "the added link")
        assert served_by(gateway, "grow") == CANNED, "nothing changes before the save"
        await save(pilot, app)

    assert served_by(gateway, "grow") == SERVED


async def test_a_removed_link_no_longer_serves(gateway: RunningAppliance) -> None:
    """Route `shrink` is served by the model; x removes that link, and the canned answer replies."""
    put_route(gateway, "shrink", [SERVED])
    assert served_by(gateway, "shrink") == SERVED

    app = console(gateway)
    async with app.run_test(size=(80, 24)) as pilot:
        links = await open_route(pilot, app, "shrink")
        await until(pilot, lambda: [r[1] for r in rows(links)] == [SERVED], "the links of shrink")
        await pilot.press("x")
        assert links.row_count == 0
        status = str(app.screen.query_one("#routes-status", Static).render())
        assert "0 link(s), then the canned answer." in status
        assert "UNSAVED" in status
        await save(pilot, app)

    assert served_by(gateway, "shrink") == CANNED
