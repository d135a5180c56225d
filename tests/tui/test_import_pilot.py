"""Importing a model from the console, against the real gateway of `conftest.gateway` and the real file."""

from __future__ import annotations

from pathlib import Path

import httpx
from textual.widgets import Checkbox, DataTable, ProgressBar, Static

from tests.e2e.server import RunningAppliance
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.screens.import_model import ImportModelScreen
from tui.screens.models import COLUMNS


def console(gateway: RunningAppliance) -> ConsoleApp:
    """The console on the gateway with the admin key."""
    return ConsoleApp(AdminClient(gateway.base_url, gateway.admin_key), poll_s=0.2)


def stored(gateway: RunningAppliance) -> dict[str, bool]:
    """Whether each model is encrypted, as GET /admin/store/models says."""
    listed = httpx.get(
        f"{gateway.base_url}/admin/store/models", headers=gateway.headers(gateway.admin_key), timeout=30
    ).json()
    return {m["name"]: m["encrypted"] for m in listed["data"]}


async def test_import_encrypts_the_file_and_lists_the_model(
    gateway: RunningAppliance, model_path: Path
) -> None:
    """i, a path and a name, Enter: the job runs in the gateway, the status says when it is served,
    the new model is in the table as encrypted, and the store really holds it encrypted."""
    app = console(gateway)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        table: DataTable[str] = app.screen.query_one("#models", DataTable)
        await until(pilot, lambda: table.row_count >= 1, "the models")
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, ImportModelScreen), "the import dialog")
        assert app.screen.query_one("#encrypt", Checkbox).value, "encrypting is the default"
        await pilot.press(*str(model_path), "tab", *"imported-smol", "enter")

        status = app.screen.query_one("#models-status", Static)
        await until(pilot, lambda: "imported-smol imported" in str(status.render()), "the finished import")
        assert "the gateway serves it now" in str(status.render())
        assert not app.screen.query_one("#import-progress", ProgressBar).display
        await until(pilot, lambda: any(r[0] == "imported-smol" for r in rows(table)), "the new row")
        row = next(r for r in rows(table) if r[0] == "imported-smol")
        assert row[COLUMNS.index("encrypted")] == "yes"

    assert stored(gateway)["imported-smol"] is True


async def test_a_refused_import_says_why_on_one_line(gateway: RunningAppliance, tmp_path: Path) -> None:
    """A file that is not GGUF is refused at once; the status line carries the gateway's message."""
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("plain text")
    app = console(gateway)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "i")
        await until(pilot, lambda: isinstance(app.screen, ImportModelScreen), "the import dialog")
        await pilot.press(*str(not_gguf), "enter")
        status = app.screen.query_one("#models-status", Static)
        await until(pilot, lambda: "refused" in str(status.render()), "the refusal")
        line = str(status.render())
        assert "notes refused: " in line
        assert "not a GGUF file" in line
        assert "\n" not in line.strip()
