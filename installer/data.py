"""The one data directory, PREFIX/data, that every installed version serves from.

Versions hold code only. The data (registry, encrypted store, store.key, settings) is never copied: a copy of
`store.key` beside an old version would still open the weights after a key rotation. An upgrade migrates the
data in place, after a consistent snapshot of the registry taken with SQLite's backup API; a rollback to code
that does not know the data's schema is refused unless the admin restores that snapshot (`--restore-data`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import stat
from pathlib import Path

from installer.errors import StateError
from installer.state import Prefix
from installer.steps import Report

# Where a version's code keeps its Alembic revisions, inside its venv.
MIGRATIONS = "venv/lib/python*/site-packages/appliance/registry/migrations/versions/*.py"
REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def prepare_data(prefix: Prefix, root: Path, report: Report) -> Path:
    """Create PREFIX/data once (mode 0700, the bundle's default settings); later installs reuse it."""
    data = prefix.data
    if data.is_dir():
        return data
    current = prefix.current()
    old_home = prefix.version_dir(current) / "home" if current is not None else None
    if old_home is not None and old_home.is_dir() and not old_home.is_symlink():
        # A prefix from before the shared data directory: the running version's home becomes the data
        # (moved, not copied), and the other versions' copies of store.key and the registry go.
        os.rename(old_home, data)
        for version in prefix.versions.iterdir():
            shutil.rmtree(version / "home", ignore_errors=True)
        report(f"data: moved version {current}'s home to {data}; older versions' copies removed")
        return data
    data.mkdir(mode=0o700)
    config = root / "bundle" / "config" / "settings.toml"
    if config.is_file():
        shutil.copyfile(config, data / "settings.toml")
    return data


def _backup(source: Path, target: Path) -> None:
    """Copy one SQLite database consistently (a reader may be mid-transaction; WAL is read, not copied)."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def snapshot_registry(prefix: Prefix, version: int) -> Path | None:
    """Keep the registry as version `version` leaves it, before the next version migrates it."""
    db = prefix.registry_db()
    if not db.is_file():
        return None
    prefix.snapshots.mkdir(mode=0o700, exist_ok=True)
    final = prefix.snapshot_of(version)
    temp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    try:
        _backup(db, temp)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def db_revision(db: Path) -> str | None:
    """The Alembic revision a registry is at; None when there is no registry or no revision yet."""
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def known_revisions(version_root: Path) -> set[str] | None:
    """The Alembic revisions a version's code ships; None when it ships no migrations at all."""
    files = list(version_root.glob(MIGRATIONS))
    if not files:
        return None
    found = set()
    for file in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.update(REVISION.findall(file.read_text(encoding="utf-8")))
    return found


def check_schema(prefix: Prefix, version: int) -> None:
    """Refuse to make `version` current when its code does not know the registry's revision."""
    revision = db_revision(prefix.registry_db())
    known = known_revisions(prefix.version_dir(version))
    if revision is not None and known is not None and revision not in known:
        raise StateError(
            f"version {version} does not know the data's schema (revision {revision}, migrated by a later "
            f"version): roll back with --restore-data to return to the data as of the upgrade from {version}"
        )


def restore_registry(prefix: Prefix, version: int, current: int) -> Path:
    """Put back the registry snapshot taken when `version` was upgraded; keep today's beside it."""
    snapshot = prefix.snapshot_of(version)
    if not snapshot.is_file():
        raise StateError(f"no data snapshot for version {version} ({snapshot} is missing)")
    revision = db_revision(snapshot)
    known = known_revisions(prefix.version_dir(version))
    if revision is not None and known is not None and revision not in known:
        raise StateError(f"the snapshot {snapshot} is at revision {revision}, unknown to version {version}")
    snapshot_registry(prefix, current)  # the data as `current` leaves it: a restore is not a loss
    put_back(prefix, snapshot)
    return snapshot


def put_back(prefix: Prefix, snapshot: Path) -> None:
    """Copy a snapshot over the registry, into the live file so that its WAL stays consistent."""
    _backup(snapshot, prefix.registry_db())


def undo_interrupted_upgrade(prefix: Prefix) -> Path | None:
    """After a kill -9 mid-upgrade: the registry at a revision the current version does not know goes back
    to the snapshot taken before the migration. Returns the snapshot put back, if any."""
    current = prefix.current()
    if current is None:
        return None
    revision = db_revision(prefix.registry_db())
    known = known_revisions(prefix.version_dir(current))
    snapshot = prefix.snapshot_of(current)
    if revision is None or known is None or revision in known or not snapshot.is_file():
        return None
    put_back(prefix, snapshot)
    return snapshot


def data_owner(prefix: Prefix) -> tuple[int, int] | None:
    """The service user that owns the data directory, or None while root owns it (no service user)."""
    try:
        info = prefix.data.stat()
    except FileNotFoundError:
        return None
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


def own_data(prefix: Prefix, uid: int, gid: int) -> None:
    """Give everything in the data directory to the service user (the installer's steps ran as root)."""
    if os.geteuid() != 0:
        return
    for folder, _dirs, files in os.walk(prefix.data):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            if name != str(prefix.admin_key):  # the admin's key stays root's (installer/admin_key.py)
                os.chown(name, uid, gid, follow_symlinks=False)
    os.chmod(prefix.data, 0o700)


def share_models(prefix: Prefix, gid: int) -> None:
    """Weights stay root's and read-only: readable by the service's group, by no other local user."""
    if os.geteuid() != 0 or not prefix.models.is_dir():
        return
    for folder, _dirs, files in os.walk(prefix.models):
        os.chown(folder, 0, gid, follow_symlinks=False)
        os.chmod(folder, 0o750)  # noqa: S103 - group: the service's own, which only reads
        for name in files:
            path = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chown(path, 0, gid, follow_symlinks=False)
                os.chmod(path, 0o640)
