"""The audit log: its writer thread, denials summed up per window, capped text, pruning, migration 0006."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

import appliance.registry.audit
from appliance.errors import SettingsError
from appliance.registry.audit import capped
from appliance.registry.audit_windows import MANY_CLIENTS, DenialKey, DenialWindows
from appliance.registry.database import MIGRATIONS
from appliance.registry.registry import Registry, open_registry
from appliance.settings import AuditSettings, load_settings


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A fresh registry; its audit writer (if a test starts it) is closed afterwards."""
    opened = open_registry(tmp_path / "registry.db")
    yield opened
    opened.audit.close()


def targets(db_path: Path) -> list[str]:
    """Every committed row's target, oldest first (read beside the log, as another process would)."""
    with sqlite3.connect(db_path) as connection:
        return [row[0] for row in connection.execute("SELECT target FROM audit_events ORDER BY id")]


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_record_returns_while_another_connection_holds_the_write_lock(
    registry: Registry, tmp_path: Path
) -> None:
    """Started, `record` only queues: it returns at once though the commit waits for the lock; the row is
    committed once the lock is gone."""
    registry.audit.start(AuditSettings())
    lock = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        registry.audit.record("keys.create", outcome="success", target="k1")
        assert time.monotonic() - started < 0.5
        assert registry.audit.flush(timeout_s=0.5) is False  # the commit is still waiting
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert registry.audit.flush(timeout_s=30) is True
    assert [(e.action, e.target) for e in registry.audit.recent()] == [("keys.create", "k1")]


def test_close_commits_everything_queued_and_every_open_count(registry: Registry, tmp_path: Path) -> None:
    """A clean shutdown loses nothing: 50 queued rows and the count of a window still open."""
    registry.audit.start(AuditSettings())
    for i in range(50):
        registry.audit.record("keys.list", outcome="success", target=f"t{i}")
    for i in range(10):
        registry.audit.record_denial("auth.failed", client="192.0.2.1", target=f"GET /{i}", reason="bad key")
    assert registry.audit.close() is True
    rows = targets(tmp_path / "registry.db")
    assert rows == [f"t{i}" for i in range(50)] + ["GET /0", "GET /9"]
    assert "9 more" in registry.audit.recent(1)[0].detail
    registry.audit.record("keys.list", outcome="success", target="after")  # closed: committed at once
    assert targets(tmp_path / "registry.db")[-1] == "after"


def test_denials_open_a_window_count_in_it_and_sum_up_at_its_end() -> None:
    """The first denial of a key is written, the next four only counted; at the window's end one summary,
    and the next denial opens a new window."""
    clock = FakeClock()
    windows = DenialWindows(60.0, clock)
    key = DenialKey("auth.failed", "192.0.2.1", None, "bad key")
    assert windows.add(key, "GET /0") == key
    assert [windows.add(key, f"GET /{i}") for i in range(1, 5)] == [None] * 4
    clock.now = 59.0
    assert windows.expired() == []
    clock.now = 60.0
    (summary,) = windows.expired()
    assert (summary.more, summary.last_target) == (4, "GET /4")
    assert summary.detail == "bad key (4 more in the 60 s after the first)"
    assert windows.add(key, "GET /5") == key
    assert windows.drain() == []  # a window with only its first has nothing more to say


def test_past_the_open_window_limit_new_addresses_share_one_key() -> None:
    """An attacker with many addresses still writes a bounded number of rows: past the limit they are `*`."""
    windows = DenialWindows(60.0, FakeClock(), max_keys=2)
    opened = [
        windows.add(DenialKey("auth.failed", f"10.0.0.{i}", None, "bad key"), "GET /") for i in range(50)
    ]
    assert [k.client for k in opened if k is not None] == ["10.0.0.0", "10.0.0.1", MANY_CLIENTS]
    (*_, many) = windows.drain()
    assert (many.key.client, many.more) == (MANY_CLIENTS, 47)


def test_capped_marks_a_cut_and_escapes_control_characters() -> None:
    """200 characters at most, the cut marked; a newline or an escape sequence is stored as text."""
    assert capped("GET /" + "a" * 500, 200) == "GET /" + "a" * 194 + "…"
    assert capped("a\nb\x1b[2J", 200) == "a\\nb\\x1b[2J"
    assert capped("x" * 200, 200) == "x" * 200
    assert len(capped("\x00" * 300, 200)) == 200


def test_start_prunes_by_age_then_by_count_denied_rows_first(registry: Registry, tmp_path: Path) -> None:
    """Rows past retention_days go; past max_rows the oldest denied rows go before any admin action."""
    db_path = tmp_path / "registry.db"
    for i in range(3):
        registry.audit.record("keys.create", outcome="success", target=f"old{i}")
    with sqlite3.connect(db_path) as connection:
        connection.execute("UPDATE audit_events SET time = datetime('now', '-400 days')")
    for i in range(10):
        registry.audit.record("auth.failed", outcome="denied", target=f"denied{i}")
    for i in range(3):
        registry.audit.record("keys.create", outcome="success", target=f"new{i}")
    registry.audit.start(AuditSettings(retention_days=365, max_rows=5))
    assert targets(db_path) == ["denied8", "denied9", "new0", "new1", "new2"]


def test_the_writer_prunes_periodically(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the gateway runs, the count bound holds too (here pruning every 50 ms instead of hourly)."""
    monkeypatch.setattr(appliance.registry.audit, "PRUNE_INTERVAL_S", 0.05)
    registry.audit.start(AuditSettings(max_rows=3))
    for i in range(10):
        registry.audit.record("keys.list", outcome="success", target=f"t{i}")
    assert registry.audit.flush(timeout_s=30)
    deadline = time.monotonic() + 20
    while len(targets(tmp_path / "registry.db")) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert targets(tmp_path / "registry.db") == ["t7", "t8", "t9"]


def test_audit_settings_are_read_and_checked(appliance_home: Path) -> None:
    """`[audit]` sets the window and the bounds; a window of 0 would write a row per failure again."""
    appliance_home.mkdir(parents=True)
    assert load_settings(appliance_home).audit == AuditSettings(60.0, 365, 500_000)
    (appliance_home / "settings.toml").write_text("[audit]\nretention_days = 30\nmax_rows = 1000\n")
    assert load_settings(appliance_home).audit == AuditSettings(60.0, 30, 1000)
    (appliance_home / "settings.toml").write_text("[audit]\nfailure_window_s = 0\n")
    with pytest.raises(SettingsError, match="failure_window_s"):
        load_settings(appliance_home)


def _migrate(db_path: Path, direction: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with create_engine(f"sqlite:///{db_path}").begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)


def test_0006_adds_the_client_address_and_keeps_every_event(tmp_path: Path) -> None:
    """Upgrading gives older events an empty address; downgrading drops the column, not the events."""
    db_path = tmp_path / "registry.db"
    _migrate(db_path, "upgrade", "0005")
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "INSERT INTO audit_events (time, action, target, outcome, detail)"
            " VALUES ('2026-11-28 00:00:00', 'keys.create', 'k', 'success', 'cli')"
        )
    registry = open_registry(db_path)
    registry.audit.record("auth.failed", outcome="denied", target="GET /", client="192.0.2.1")
    assert [(e.action, e.client) for e in registry.audit.recent()] == [
        ("auth.failed", "192.0.2.1"),
        ("keys.create", ""),
    ]
    _migrate(db_path, "downgrade", "0005")
    with sqlite3.connect(db_path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(audit_events)")]
        assert connection.execute("SELECT count(*) FROM audit_events").fetchone() == (2,)
    assert "client" not in columns
