"""Model versions in the registry: adding, activating, rolling back, and migration 0004 from 0003."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from appliance.errors import ConflictError, InvalidRequestError, ModelNotFoundError
from appliance.registry.database import MIGRATIONS
from appliance.registry.registry import Registry, open_registry
from tests.appliance.test_registry import FAKE_GGUF

V2 = replace(FAKE_GGUF, sha256="cd" * 32, size_bytes=4321)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry holding model `smol` (alias `default`), version 1."""
    opened = open_registry(tmp_path / "registry.db")
    opened.models.add(Path("/m/v1.gguf"), FAKE_GGUF, name="smol", aliases=("default",))
    return opened


def test_a_new_version_is_added_inactive_and_keeps_the_aliases(registry: Registry) -> None:
    """Version 2 is registered beside version 1; requests still resolve to version 1."""
    added = registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version="2")
    assert (added.version, added.active, added.aliases) == ("2", False, ("default",))
    assert registry.models.resolve("default").version == "1"
    assert [m.version for m in registry.models.list()] == ["1"]
    assert [(m.version, m.active) for m in registry.models.versions("smol")] == [("1", True), ("2", False)]


@pytest.mark.parametrize(
    ("version", "error", "match"),
    [
        (None, ConflictError, "give a version"),
        ("1", ConflictError, "already has a version"),
        ("../x", InvalidRequestError, "letters, digits"),
        ("", InvalidRequestError, "letters, digits"),
    ],
)
def test_a_bad_new_version_is_refused(
    registry: Registry, version: str | None, error: type[Exception], match: str
) -> None:
    """No version, a taken one or one that is no plain name: refused, and nothing is added."""
    with pytest.raises(error, match=match):
        registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version=version)
    assert len(registry.models.versions("smol")) == 1


def test_activate_switches_and_previous_goes_back(registry: Registry) -> None:
    """Activating 2 serves 2 under the same aliases and status; previous() names 1, then 2 again."""
    registry.models.set_status("smol", "disabled")
    registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version="2")
    active = registry.models.activate("smol", "2")
    assert (active.version, active.status, active.sha256) == ("2", "disabled", V2.sha256)
    assert registry.models.resolve("default").version == "2"
    assert registry.models.previous("smol").version == "1"
    registry.models.activate("smol", "1")
    assert registry.models.resolve("smol").version == "1"
    assert registry.models.previous("smol").version == "2"


def test_without_an_earlier_version_there_is_no_previous(registry: Registry) -> None:
    """A model only ever served at version 1 has nothing to roll back to."""
    registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version="2")
    with pytest.raises(ModelNotFoundError, match="no earlier active version"):
        registry.models.previous("smol")


def test_remove_version_refuses_the_active_one(registry: Registry) -> None:
    """An inactive version can go; the active one cannot; remove() takes every version."""
    registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version="2")
    with pytest.raises(ConflictError, match="active one"):
        registry.models.remove_version("smol", "1")
    assert registry.models.remove_version("smol", "2").version == "2"
    registry.models.add(Path("/m/v3.gguf"), V2, name="smol", version="3")
    registry.models.remove("smol")
    with pytest.raises(ModelNotFoundError):
        registry.models.versions("smol")


def _migrate(db_path: Path, step: str, revision: str) -> None:
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")  # as the appliance opens it
            config.attributes["connection"] = connection
            getattr(command, step)(config, revision)
    finally:
        engine.dispose()


def test_0004_keeps_models_and_store_keys_of_a_0003_database(tmp_path: Path) -> None:
    """Upgrading makes each model version 1, active, and loses no store key; downgrading drops extras."""
    db_path = tmp_path / "registry.db"
    _migrate(db_path, "upgrade", "0003")
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "INSERT INTO models (id, name, aliases, format, architecture, quantization, path, sha256,"
            " size_bytes, context_length, has_chat_template, status, created_at)"
            " VALUES (7, 'smol', '[\"default\"]', 'gguf', 'llama', 'Q4_1', '/m/a', 'ab', 1, 2048, 1,"
            " 'enabled', '2026-11-28 00:00:00')"
        )
        connection.execute(
            "INSERT INTO model_keys VALUES (7, 'file-7', x'0102', 'fp', 1, '2026-11-28 00:00:00')"
        )
    _migrate(db_path, "upgrade", "0004")
    registry = open_registry(db_path)
    (model,) = registry.models.versions("smol")
    assert (model.id, model.version, model.active, model.aliases) == (7, "1", True, ("default",))
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT model_id, file_id FROM model_keys").fetchall() == [(7, "file-7")]
    registry.models.add(Path("/m/v2.gguf"), V2, name="smol", version="2")
    _migrate(db_path, "downgrade", "0003")
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT id, name FROM models").fetchall() == [(7, "smol")]
        assert connection.execute("SELECT model_id FROM model_keys").fetchall() == [(7,)]
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO models (name, aliases, format, architecture, quantization, path, sha256,"
                " size_bytes, context_length, has_chat_template, status, created_at)"
                " VALUES ('smol', '[]', 'gguf', 'l', 'q', '/m/b', 'cd', 1, 1, 1, 'enabled', '2026-11-28')"
            )


def test_0005_adds_the_tool_parser_and_keeps_store_keys(tmp_path: Path) -> None:
    """Upgrading leaves every model following its architecture; downgrading loses no store key."""
    db_path = tmp_path / "registry.db"
    _migrate(db_path, "upgrade", "0004")
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "INSERT INTO models (id, name, version, active, aliases, format, architecture, quantization,"
            " path, sha256, size_bytes, context_length, has_chat_template, status, created_at)"
            " VALUES (7, 'qwen', '1', 1, '[]', 'awq', 'Qwen2ForCausalLM', 'AWQ', '/m/q', 'ab', 1, 2048, 1,"
            " 'enabled', '2026-11-28 00:00:00')"
        )
        connection.execute(
            "INSERT INTO model_keys VALUES (7, 'file-7', x'0102', 'fp', 1, '2026-11-28 00:00:00')"
        )
    _migrate(db_path, "upgrade", "0005")
    registry = open_registry(db_path)
    assert registry.models.versions("qwen")[0].tool_parser is None
    assert registry.models.set_tool_parser("qwen", "mistral").tool_parser == "mistral"
    _migrate(db_path, "downgrade", "0004")
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT model_id, file_id FROM model_keys").fetchall() == [(7, "file-7")]
        columns = [row[1] for row in connection.execute("PRAGMA table_info(models)")]
    assert "tool_parser" not in columns
