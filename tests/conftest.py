"""Fixtures every test shares: a private APPLIANCE_HOME and the real embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def appliance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty data directory."""
    home = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF that build.sh fetches; its absence is a set-up failure."""
    path = Path(os.environ.get("APPLIANCE_TEST_MODEL", DEFAULT_MODEL))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run ./build.sh test, which fetches it")
    return path
