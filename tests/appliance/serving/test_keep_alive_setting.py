"""A model's own keep-alive: stored on every version (migration 0008), set with `appliance models set
--keep-alive` as a real process, refused in one line when it is no duration."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from appliance.errors import InvalidRequestError, ModelNotFoundError
from appliance.registry.registry import Registry, open_registry
from appliance.settings import load_settings
from tests.api.console import run_appliance
from tests.appliance.serving.test_live import FAKE_GGUF
from tests.appliance.store.test_migration import _run, columns_of
from tests.gguf_files import write_tiny_gguf


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A freshly migrated registry."""
    return open_registry(tmp_path / "registry.db")


def test_keep_alive_is_set_on_every_version_and_cleared_with_none(registry: Registry) -> None:
    """set_keep_alive reaches every version; a new version takes the name's; None follows the setting."""
    registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a")
    assert registry.models.resolve("a").keep_alive_s is None
    assert registry.models.set_keep_alive("a", -1).keep_alive_s == -1
    registry.models.add(Path("/m/a2.gguf"), FAKE_GGUF, name="a", version="2")
    assert [v.keep_alive_s for v in registry.models.versions("a")] == [-1, -1]
    registry.models.set_keep_alive("a", 90)
    assert [v.keep_alive_s for v in registry.models.versions("a")] == [90, 90]
    assert registry.models.set_keep_alive("a", None).keep_alive_s is None
    with pytest.raises(InvalidRequestError, match="-1 for pinned"):
        registry.models.set_keep_alive("a", -2)
    with pytest.raises(ModelNotFoundError):
        registry.models.set_keep_alive("missing", 10)


def test_0008_adds_a_null_keep_alive_and_downgrading_drops_it(tmp_path: Path) -> None:
    """A model registered before 0008 follows the setting (NULL); downgrading drops the column."""
    db_path = tmp_path / "registry.db"
    _run(db_path, "upgrade", "0008")
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        assert "keep_alive_s" in columns_of(engine, "models")
        _run(db_path, "downgrade", "0007")
        assert "keep_alive_s" not in columns_of(engine, "models")
    finally:
        engine.dispose()


def test_models_set_keep_alive_from_the_command_line(appliance_home: Path, tmp_path: Path) -> None:
    """Durations, -1 and `default` as an admin types them; the registry holds seconds (or NULL)."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert run_appliance("models", "add", str(model), "--name", "tiny").returncode == 0
    for typed, said, stored in (
        ("10m", "tiny: keep-alive 10m (as set)", 600.0),
        ("-1", "tiny: keep-alive pinned (as set)", -1.0),
        ("0", "tiny: keep-alive unload after each request (as set)", 0.0),
        ("default", "tiny: keep-alive 5m (the [residency] setting)", None),
    ):
        done = run_appliance("models", "set", "tiny", "--keep-alive", typed)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == said
        registry = open_registry(load_settings(appliance_home).database_path)
        assert registry.models.resolve("tiny").keep_alive_s == stored
    refused = run_appliance("models", "set", "tiny", "--keep-alive", "5d")
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: keep-alive '5d': a duration like 30s, 5m or 1h")
