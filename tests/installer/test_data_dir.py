"""One data directory for every version: upgrades migrate it after a snapshot, rollbacks keep what is new."""

from __future__ import annotations

import os
import pwd
import sqlite3
import subprocess
from pathlib import Path

import pytest

from installer import errors
from installer.bundled_models import store_model
from installer.data import db_revision
from installer.state import InstalledVersion, Prefix
from tests.installer.helpers import Recipe, make_bundle, run_installed_appliance, run_installer

Keys = dict[str, tuple[Path, Path]]
GGUF = b"GGUF tiny " * 50


def _install(prefix: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_installer("install", str(bundle), "--prefix", str(prefix), *extra)


@pytest.fixture
def v1(tmp_path: Path, keys: Keys) -> Path:
    """A prefix with version 1 (registry revision 0001) really installed, and one key."""
    prefix = tmp_path / "prefix"
    bundle = make_bundle(tmp_path / "w1", keys["a"][0], Recipe(version=1, revisions=("0001",)))
    done = _install(prefix, bundle, "--trust", str(keys["a"][1]))
    assert done.returncode == 0, done.stderr
    run_installed_appliance(prefix, "keys", "create", "--name", "before")
    return prefix


def test_versions_share_one_data_dir_and_a_new_key_survives_rollback(
    v1: Path, tmp_path: Path, keys: Keys
) -> None:
    """Version 2 (same schema) serves the same data; a key made under 2 is still there after rollback."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2, revisions=("0001",)))
    done = _install(v1, bundle)
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 2"
    run_installed_appliance(v1, "keys", "create", "--name", "after")
    assert (v1 / "data" / "snapshots" / "registry-1.db").is_file()
    done = run_installer("rollback", "--prefix", str(v1))
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    assert run_installed_appliance(v1, "keys", "list").split() == ["after", "before"]
    assert sorted(p.name for p in v1.iterdir()) == [
        ".lock",
        "current",
        "data",
        "models",
        "state.json",
        "versions",
    ]


def test_no_version_folder_holds_store_key(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """The store key exists once, in the data directory; no version folder has a copy (or a home)."""
    assert _install(v1, make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))).returncode == 0
    assert _install(v1, make_bundle(tmp_path / "w3", keys["a"][0], Recipe(version=3))).returncode == 0
    assert (v1 / "data" / "store.key").is_file()
    assert list(v1.rglob("store.key")) == [v1 / "data" / "store.key"]
    assert not list((v1 / "versions").glob("*/home"))


def test_rollback_across_a_migration_needs_restore_data(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """Version 2 migrates to 0002, which version 1 does not know: a plain rollback is refused with one
    line naming --restore-data, and writes nothing; --restore-data puts back the registry of the upgrade."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2, revisions=("0001", "0002")))
    assert _install(v1, bundle).returncode == 0
    run_installed_appliance(v1, "keys", "create", "--name", "after")
    db = v1 / "data" / "registry.db"
    assert db_revision(db) == "0002"
    done = run_installer("rollback", "--prefix", str(v1))
    assert done.returncode == errors.StateError.exit_code
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--restore-data" in done.stderr
    assert Prefix(v1).current() == 2
    service = pwd.getpwnam("daemon")
    if os.geteuid() == 0:  # as after an install with --systemd: the data belongs to the service user
        for path in [v1 / "data", *(v1 / "data").rglob("*")]:
            os.chown(path, service.pw_uid, service.pw_gid)
    done = run_installer("rollback", "--restore-data", "--prefix", str(v1))
    assert done.returncode == 0, done.stderr
    if os.geteuid() == 0:  # what the installer wrote as root is the service's too
        assert {p.stat().st_uid for p in (v1 / "data").rglob("*")} == {service.pw_uid}
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    assert db_revision(db) == "0001"
    assert run_installed_appliance(v1, "keys", "list").split() == ["before"]
    # Today's registry was kept too: nothing is lost for good by a restore.
    assert db_revision(v1 / "data" / "snapshots" / "registry-2.db") == "0002"


def test_a_failed_upgrade_puts_the_registry_back(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """A failure after the migration (a model whose weights are missing) leaves version 1 current on the
    registry it had, not on one migrated by the version that failed."""
    broken = b'{"name": "ghost", "file": "ghost.gguf", "format": "gguf"}'
    files = {"models/ghost/registry.json": ("model", broken)}
    recipe = Recipe(version=2, revisions=("0001", "0002"), files=files)
    done = _install(v1, make_bundle(tmp_path / "w2", keys["a"][0], recipe))
    assert done.returncode == errors.InstallStepError.exit_code, done.stderr
    assert Prefix(v1).current() == 1
    assert db_revision(v1 / "data" / "registry.db") == "0001"
    assert run_installed_appliance(v1, "keys", "list").split() == ["before"]


def test_a_kill_mid_migration_is_undone_by_the_next_run(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """On-disk state of a kill -9 after version 2 migrated the registry, before it was listed: the next run
    puts the snapshot back before anything else."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2, revisions=("0001", "0002")))
    assert _install(v1, bundle).returncode == 0
    Prefix(v1).switch_current(1)  # what the disk holds if the install died after migrating
    assert db_revision(v1 / "data" / "registry.db") == "0002"
    done = _install(v1, bundle)
    assert done.returncode == 0, done.stderr
    assert "registry put back from" in done.stderr
    assert db_revision(v1 / "data" / "registry.db") == "0002"
    assert run_installed_appliance(v1, "keys", "list").split() == ["before"]


def test_an_old_layout_home_becomes_the_data_dir(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """A prefix from before the shared data directory (versions/<N>/home): the current home is moved to
    data/ (not copied) and older versions' homes, with their copies of store.key, are removed."""
    os.rename(v1 / "data", v1 / "versions" / "1" / "home")
    (v1 / "versions" / "0" / "home").mkdir(parents=True)
    (v1 / "versions" / "0" / "home" / "store.key").write_text("old copy")
    state = Prefix(v1).load()
    state.installed.append(InstalledVersion(0, "cpu", "0" * 64, 0))
    Prefix(v1).save(state)
    assert _install(v1, make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))).returncode == 0
    assert run_installed_appliance(v1, "keys", "list").split() == ["before"]
    assert list(v1.rglob("store.key")) == [v1 / "data" / "store.key"]


def test_shared_weights_are_reused_only_when_their_sha256_matches(tmp_path: Path) -> None:
    """A file of the right size but other bytes in PREFIX/models/<sha256>/ is replaced, not reused."""
    import hashlib

    prefix = Prefix(tmp_path / "prefix")
    source = tmp_path / "bundle" / "tiny.gguf"
    source.parent.mkdir()
    source.write_bytes(GGUF)
    sha = hashlib.sha256(GGUF).hexdigest()
    stored = prefix.models / sha / "tiny.gguf"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"X" * len(GGUF))  # same size, different bytes
    assert store_model(prefix, source, sha) == stored
    assert stored.read_bytes() == GGUF
    before = stored.stat().st_ino
    again = tmp_path / "bundle2" / "tiny.gguf"
    again.parent.mkdir()
    again.write_bytes(GGUF)
    assert store_model(prefix, again, sha) == stored
    assert stored.stat().st_ino == before  # the right bytes are reused as they are


def test_snapshot_is_consistent_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    """The backup API copies what is committed, even with a write transaction open in WAL mode."""
    from installer.data import snapshot_registry

    prefix = Prefix(tmp_path / "prefix")
    prefix.data.mkdir(parents=True)
    writer = sqlite3.connect(prefix.registry_db(), isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE alembic_version (version_num TEXT)")
    writer.execute("INSERT INTO alembic_version VALUES ('0001')")
    writer.execute("BEGIN")
    writer.execute("UPDATE alembic_version SET version_num = '9999'")
    snapshot = snapshot_registry(prefix, 1)
    writer.execute("ROLLBACK")
    writer.close()
    assert snapshot is not None
    assert db_revision(snapshot) == "0001"
    assert oct(snapshot.stat().st_mode & 0o777) == "0o600"
