"""Migration 0002 adds the store's tables on top of 0001 and removes them again on downgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect

from appliance.registry.database import MIGRATIONS

STORE_TABLES = {"store_kek", "model_keys"}


def columns_of(engine: Engine, table: str) -> list[str]:
    """The names of a table's columns, as SQLite reports them."""
    with engine.connect() as connection:
        return [row[1] for row in connection.exec_driver_sql(f"PRAGMA table_info({table})")]


def _run(db_path: Path, step: str, revision: str) -> set[str]:
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, step)(config, revision)
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0002_upgrade_and_downgrade(tmp_path: Path) -> None:
    """0001 has no store tables, 0002 has both, and downgrading to 0001 drops them."""
    db_path = tmp_path / "registry.db"
    assert not _run(db_path, "upgrade", "0001") & STORE_TABLES
    assert _run(db_path, "upgrade", "0002") >= STORE_TABLES | {"models"}
    assert not _run(db_path, "downgrade", "0001") & STORE_TABLES


def test_0007_keeps_an_old_passphrase_record_at_the_old_cost(tmp_path: Path) -> None:
    """A store_kek row from before 0007 gets a NULL scrypt_n (read as 2^15); downgrading drops the column."""
    db_path = tmp_path / "registry.db"
    _run(db_path, "upgrade", "0006")
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO store_kek (id, fingerprint, mode, scrypt_salt, changed_at) "
                "VALUES (1, 'f', 'passphrase', x'00', '2026-01-01 00:00:00')"
            )
        _run(db_path, "upgrade", "0007")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT scrypt_n FROM store_kek").scalar_one() is None
        _run(db_path, "downgrade", "0006")
        assert "scrypt_n" not in columns_of(engine, "store_kek")
    finally:
        engine.dispose()
