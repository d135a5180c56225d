"""Unlocking a passphrase-mode store from the console, against a real locked gateway."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from textual.widgets import Static

from tests.e2e.server import APPLIANCE, READY_TIMEOUT_S, RunningAppliance, cli, free_port
from tests.tui.helpers import until
from tui.app import ConsoleApp
from tui.client import AdminClient

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """`appliance serve` of an encrypted SmolLM2 whose store key comes from a passphrase: it starts locked."""
    home = tmp_path_factory.mktemp("tui-locked") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[workers]\nthreads = 1\ncontext_length = 1024\n'
    )
    cli(home, "models", "import", str(model_path), "--name", "smollm2-135m")
    environment = os.environ | {"APPLIANCE_HOME": str(home), "APPLIANCE_STORE_NEW_PASSPHRASE": PASSPHRASE}
    rotated = subprocess.run(
        [APPLIANCE, "store", "rotate-key", "--passphrase"], env=environment, capture_output=True, check=False
    )
    assert rotated.returncode == 0, rotated.stderr
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [APPLIANCE, "serve"], env=os.environ | {"APPLIANCE_HOME": str(home)}, stdout=log, stderr=log
        )
    running = RunningAppliance(home, port, admin, user, process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _alive(running):  # locked, it is alive but never ready
        assert process.poll() is None, running.log
        assert time.monotonic() < deadline, "appliance serve did not come up"
        time.sleep(0.2)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log
    assert PASSPHRASE not in running.log


def _alive(running: RunningAppliance) -> bool:
    try:
        return httpx.get(f"{running.base_url}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def chat_status(gateway: RunningAppliance) -> int:
    """The status of a real chat request to the encrypted model."""
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    url = f"{gateway.base_url}/v1/chat/completions"
    return httpx.post(url, json=body, headers=gateway.headers(), timeout=120).status_code


async def test_unlock_with_passphrase_then_lock(locked: RunningAppliance) -> None:
    """A wrong passphrase is refused and the store stays locked; the right one unlocks and the model
    serves; l locks it again."""
    assert chat_status(locked) == 503
    app = ConsoleApp(AdminClient(locked.base_url, locked.admin_key), poll_s=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        state = app.screen.query_one("#store-state", Static)
        await until(pilot, lambda: "State: LOCKED" in str(state.render()), "the locked store")
        assert "Mode:  passphrase" in str(state.render())

        await pilot.press("u", *"not it", "enter")
        await until(pilot, lambda: any("wrong" in n.message for n in app._notifications), "the refusal")
        assert "State: LOCKED" in str(state.render())

        await pilot.press("u", *PASSPHRASE, "enter")
        await until(pilot, lambda: "State: unlocked" in str(state.render()), "the unlocked store")
        assert chat_status(locked) == 200

        await pilot.press("l")
        await until(pilot, lambda: "State: LOCKED" in str(state.render()), "the store locked again")
    assert chat_status(locked) == 503
