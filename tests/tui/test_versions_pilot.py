"""Switching model versions from the console against a real gateway serving real SmolLM2 files: version 2
is a good copy, version 3 a copy cut in half on disk after it was registered."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, ProgressBar, Static

from tests.e2e.server import RunningAppliance, cli, start_appliance
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.schemas import Activated
from tui.screens.confirm import ConfirmScreen
from tui.screens.models import ModelsScreen
from tui.screens.versions import VersionsScreen

MODEL = "smollm2-135m"
# An activation loads a worker and runs the checks: seconds, more on a busy machine; 50 ms steps.
ACTIVATION_STEPS = 2400


def _add_version(running: RunningAppliance, model_path: Path, version: str) -> Path:
    copy = running.home / f"smollm2-v{version}.gguf"
    shutil.copyfile(model_path, copy)
    cli(running.home, "models", "add", str(copy), "--name", MODEL, "--version", version)
    return copy


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """A gateway serving version 1, with a good version 2 and a damaged version 3 registered while it runs
    (the registry is read at activation time). Its own gateway: switching versions must not disturb the
    other console tests."""
    running = start_appliance(tmp_path_factory.mktemp("tui-versions") / "home", model_path)
    _add_version(running, model_path, "2")
    damaged = _add_version(running, model_path, "3")
    with damaged.open("r+b") as file:
        file.truncate(damaged.stat().st_size // 2)
    yield running
    running.stop()
    # The worker that tried version 3 says why in one line, never a traceback.
    assert f"cannot serve smollm2-135m: {damaged}: llama.cpp could not load this model" in running.log
    assert "Traceback" not in running.log, running.log


def engine_version(running: RunningAppliance) -> str:
    """The version GET /admin/engines says serves the model."""
    engines = httpx.get(
        f"{running.base_url}/admin/engines", headers=running.headers(running.admin_key), timeout=30
    ).json()["data"]
    (engine,) = [e for e in engines if e["model"] == MODEL]
    return str(engine["version"])


def served_version(running: RunningAppliance) -> str:
    """The version that answers a real completion, from its X-Served-Model-Version header."""
    answer = httpx.post(
        f"{running.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 2},
        headers=running.headers(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["x-served-model-version"]


def status_line(app: ConsoleApp) -> str:
    """The models screen's status line (the screen under a dialog too)."""
    screen = next(s for s in app.screen_stack if isinstance(s, ModelsScreen))
    return str(screen.query_one("#models-status", Static).render())


async def open_versions(app: ConsoleApp, pilot: Pilot[None]) -> DataTable[str]:
    """From the models screen: `a` on the model's row, wait for its versions."""
    table: DataTable[str] = app.screen.query_one("#models", DataTable)
    await until(pilot, lambda: any(r[0] == MODEL for r in rows(table)), "the model")
    table.move_cursor(row=[r[0] for r in rows(table)].index(MODEL))
    await pilot.press("a")
    await until(pilot, lambda: isinstance(app.screen, VersionsScreen), "the versions dialog")
    versions: DataTable[str] = app.screen.query_one("#versions", DataTable)
    await until(pilot, lambda: versions.row_count == 3, "three versions")
    return versions


class HeldClient(AdminClient):
    """The real admin client, except that an activation or rollback is sent only once the test has seen the
    console say it is working: a refusal of a damaged file can come back within one 50 ms poll, and the test
    must not depend on catching the working state before the gateway answers."""

    def __init__(self, base_url: str, admin_key: str) -> None:
        super().__init__(base_url, admin_key)
        self.held: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        """The gate the next activation waits on (made on the app's own event loop)."""
        self.held = asyncio.Event()
        return self.held

    async def _released(self) -> None:
        if self.held is not None:
            await self.held.wait()

    async def activate_version(self, name: str, version: str) -> Activated:
        await self._released()
        return await super().activate_version(name, version)

    async def roll_back(self, name: str) -> Activated:
        await self._released()
        return await super().roll_back(name)


def console(running: RunningAppliance) -> tuple[ConsoleApp, HeldClient]:
    """The console on the gateway with the admin key, and its client."""
    client = HeldClient(running.base_url, running.admin_key)
    return ConsoleApp(client, poll_s=0.2), client


async def switch(app: ConsoleApp, client: HeldClient, pilot: Pilot[None], *keys: str) -> None:
    """Press `keys` in the versions dialog, confirm, and see the console working until the gateway answers."""
    gate = client.hold()
    await pilot.press(*keys)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    await pilot.press("y")
    await until(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen again")
    bar = app.screen.query_one("#activation-progress", ProgressBar)
    # While the gateway loads a worker and runs the checks, the console says so and the bar moves.
    await until(pilot, lambda: "running the checks" in status_line(app), "that it is working")
    assert bar.display, "the moving bar shows the activation is still running"
    gate.set()
    await until(pilot, lambda: not bar.display, "the gateway's answer", steps=ACTIVATION_STEPS)


async def test_activate_version_2_then_roll_back(versioned: RunningAppliance) -> None:
    """Enter on version 2 and `y`: the gateway serves version 2 and the table says so; `b` and `y` in the
    dialog: version 1 serves again."""
    app, client = console(versioned)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        listed = await open_versions(app, pilot)
        assert [r[:2] for r in rows(listed)] == [["*", "1"], ["", "2"], ["", "3"]]
        await switch(app, client, pilot, "up", "enter")
        assert f"{MODEL} now serves version 2 (was 1)" in status_line(app)
        assert "deep probe" in status_line(app), "the checks it passed"
        assert (engine_version(versioned), served_version(versioned)) == ("2", "2")
        table: DataTable[str] = app.screen.query_one("#models", DataTable)
        await until(pilot, lambda: [MODEL, "2"] in [r[:2] for r in rows(table)], "version 2 in the table")

        listed = await open_versions(app, pilot)
        assert [r[:2] for r in rows(listed)] == [["", "1"], ["*", "2"], ["", "3"]]
        await switch(app, client, pilot, "b")
        assert f"{MODEL} now serves version 1 (was 2)" in status_line(app)
        assert (engine_version(versioned), served_version(versioned)) == ("1", "1")
        await until(pilot, lambda: [MODEL, "1"] in [r[:2] for r in rows(table)], "version 1 in the table")


async def test_a_refused_activation_says_why_and_the_old_version_serves(versioned: RunningAppliance) -> None:
    """Version 3's file is cut short: the console shows the gateway's one-line refusal, and the version that
    served before still does."""
    before = engine_version(versioned)
    app, client = console(versioned)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await open_versions(app, pilot)
        await switch(app, client, pilot, "enter")  # the cursor starts on the newest version: 3
        line = status_line(app)
        assert f"{MODEL}: activate version 3 refused: " in line
        assert "did not load" in line
        assert "\n" not in line.strip()
    assert (engine_version(versioned), served_version(versioned)) == (before, before)
