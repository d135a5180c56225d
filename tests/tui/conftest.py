"""A real running gateway for the console's Pilot and tmux tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import RunningAppliance, cli, start_appliance


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """`appliance serve` on the real model; a second model `spare` is registered after start, disabled, so
    the registry lists it but no worker serves it (the console may enable, disable and remove it)."""
    running = start_appliance(tmp_path_factory.mktemp("tui") / "home", model_path)
    cli(running.home, "models", "add", str(model_path), "--name", "spare", "--disabled")
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log
