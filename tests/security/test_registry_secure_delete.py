"""Issue 17 item 7: the registry zeroes what it deletes, so a removed model's wrapped key is not left over."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from appliance.registry.database import _sqlite_pragmas, open_database
from appliance.registry.registry import open_registry
from appliance.store.store import ModelStore
from tests.gguf_files import write_tiny_gguf


def test_every_registry_connection_asks_for_secure_delete() -> None:
    """The connect hook sets the pragma itself (a distribution's SQLite may or may not default to it)."""
    connection = sqlite3.connect(":memory:")
    connection.execute("PRAGMA secure_delete=OFF")
    _sqlite_pragmas(connection, None)
    assert connection.execute("PRAGMA secure_delete").fetchone() == (1,)


def test_registry_connection_reads_back_secure_delete_on(appliance_home: Path) -> None:
    """PRAGMA secure_delete on the appliance's own connection reads back as 1."""
    sessions = open_database(appliance_home / "registry.db")
    with sessions() as session:
        assert session.execute(text("PRAGMA secure_delete")).scalar() == 1


def test_a_removed_models_wrapped_key_leaves_no_trace_in_the_database(
    appliance_home: Path, tmp_path: Path
) -> None:
    """Import, remove, checkpoint the WAL into the file: the wrapped key's bytes are not in registry.db."""
    database = appliance_home / "registry.db"
    registry = open_registry(database)
    store = ModelStore(appliance_home, registry, chunk_size=64)
    store.import_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), name="tiny")
    [key] = registry.store_keys.all()
    store.remove("tiny")
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert key.wrapped_key not in database.read_bytes()
