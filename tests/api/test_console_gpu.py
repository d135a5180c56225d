"""GPU use in GET /admin/console/overview: the gateway's NVML collector's figures per GPU, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

import api.admin.console
import api.app
from api.app import create_app
from appliance.default_settings import write_default_settings
from appliance.registry.keys import Role
from appliance.registry.registry import open_registry
from appliance.settings import load_settings
from tests.appliance.fake_nvml import FakeNvml, h100

MIB = 1024 * 1024


def gateway_app(home: Path) -> tuple[Litestar, str]:
    """A real gateway app over an empty registry in `home`, and an admin key for it."""
    home.mkdir(parents=True, exist_ok=True)
    write_default_settings(home)
    settings = load_settings(home)
    registry = open_registry(settings.database_path)
    admin = registry.keys.create("admin", Role.ADMIN).secret
    return create_app(settings, registry), admin


async def overview(home: Path, nvml: Any | None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One overview from a real gateway app, with `nvml` as the pynvml module."""
    # The fake stands for the pynvml module (libnvidia-ml), which this machine has no GPU for.
    for module in (api.app, api.admin.console):
        monkeypatch.setattr(module, "load_nvml", lambda: nvml)
    app, admin = gateway_app(home)
    async with AsyncTestClient(app) as client:
        response = await client.get("/admin/console/overview", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_each_gpu_reports_its_utilisation_and_memory(
    appliance_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An H100 at 45% with 40000 of 81559 MiB in use shows those figures, read at the poll."""
    nvml = FakeNvml([h100(free_mib=41559, utilization_percent=45)])
    body = await overview(appliance_home, nvml, monkeypatch)
    assert body["gpu_usage"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_ratio": 0.45,
            "memory_used_bytes": 40000 * MIB,
            "memory_total_bytes": 81559 * MIB,
            "temperature_celsius": 40.0,
            "power_watts": 70.0,
        }
    ]
    assert body["hardware"]["gpus"][0]["memory_total_mib"] == 81559


async def test_without_a_gpu_the_overview_says_why(
    appliance_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No NVML: no GPU figures, and the hardware note says why."""
    body = await overview(appliance_home, None, monkeypatch)
    assert body["gpu_usage"] == []
    assert body["hardware"]["gpus"] == []
    assert "no NVIDIA GPU" in body["hardware"]["gpu_note"]
