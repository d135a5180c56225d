"""One real appliance for the end-to-end tests of a session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import RunningAppliance, start_appliance


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """`appliance serve` on the real SmolLM2 model, shared by the e2e tests, stopped at the end."""
    running = start_appliance(tmp_path_factory.mktemp("e2e") / "home", model_path)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


@pytest.fixture
def client(appliance: RunningAppliance) -> Iterator[httpx.Client]:
    """An HTTP client on the gateway that sends the user key."""
    with httpx.Client(base_url=appliance.base_url, headers=appliance.headers(), timeout=60) as http:
        yield http
