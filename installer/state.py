"""The install state under PREFIX: trusted keys, installed versions, history, the `current` link, a lock.

Layout: PREFIX/state.json (this state), PREFIX/versions/<N>/ (one folder per installed version: code
only), PREFIX/current -> versions/<N> (a relative symlink switched with one rename), PREFIX/models/
(weights shared by versions), PREFIX/data/ (the one data directory every version serves from: the
service's only writable folder; data/snapshots/ holds the registry as each upgrade found it,
data/admin.key the admin key `--start` created), PREFIX/run/ (the supervised service's pid records, socket
holder and log, when systemd does not run it; data.lock, held while the data or `current` changes),
PREFIX/.lock. The `current` link is the authority on which version
runs; state.json says which version folders are complete. A version folder that state.json does not
list is debris from an interrupted install and is removed by the next installer run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from installer.errors import StateError
from installer.trust import TrustedKeys

STATE_FORMAT = 1
HISTORY_KEPT = 200


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content, never a mix."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class InstalledVersion:
    """One complete version folder."""

    version: int
    profile: str
    key_id: str
    installed_at: int


@dataclass
class InstallState:
    """Everything the installer remembers between runs."""

    trust: TrustedKeys = field(default_factory=TrustedKeys)
    installed: list[InstalledVersion] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, action: str, outcome: str, detail: str) -> None:
        """Append one audit entry (kept to the last HISTORY_KEPT)."""
        entry = {"at": int(time.time()), "action": action, "outcome": outcome, "detail": detail}
        self.history = [*self.history, entry][-HISTORY_KEPT:]

    def highest_version(self) -> int | None:
        """The highest version ever installed here (rollback protection holds bundles to at least this)."""
        return max((v.version for v in self.installed), default=None)

    def to_bytes(self) -> bytes:
        """The state file's content."""
        document = {
            "format": STATE_FORMAT,
            "trust": self.trust.to_json(),
            "installed": [vars(v) for v in self.installed],
            "history": self.history,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


class Prefix:
    """The install prefix and the operations on its layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_file = root / "state.json"
        self.versions = root / "versions"
        self.current_link = root / "current"
        self.models = root / "models"
        self.data = root / "data"
        self.snapshots = self.data / "snapshots"
        # The admin key the installer created for itself (and the admin): root's, even inside data/.
        self.admin_key = self.data / "admin.key"
        # The supervised service's pid record and log when systemd does not run it: root's, outside
        # data/, so that the service cannot point the pid that root signals at another process.
        self.run = root / "run"

    def exists(self) -> bool:
        """Whether an install state exists here (i.e. this is not a first install)."""
        return self.state_file.is_file()

    def load(self) -> InstallState:
        """Read state.json; a missing file is an empty state."""
        if not self.state_file.exists():
            return InstallState()
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
            if raw.get("format") != STATE_FORMAT:
                raise StateError(f"{self.state_file} has format {raw.get('format')!r}, not {STATE_FORMAT}")
            return InstallState(
                TrustedKeys.from_json(raw["trust"]),
                [InstalledVersion(**v) for v in raw["installed"]],
                list(raw["history"]),
            )
        except StateError:
            raise
        except Exception as error:  # noqa: BLE001  (any damage to the file is one clear refusal)
            raise StateError(f"{self.state_file} is unreadable ({error.__class__.__name__})") from None

    def save(self, state: InstallState) -> None:
        """Write state.json atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, state.to_bytes())

    def current(self) -> int | None:
        """The version `current` points at, or None before the first install."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StateError(f"{self.current_link} is not a symlink ({error.strerror})") from None
        name = Path(target).name
        if not name.isdigit():
            raise StateError(f"{self.current_link} points at {target!r}, not a version folder")
        return int(name)

    def version_dir(self, version: int) -> Path:
        """The folder of one version."""
        return self.versions / str(version)

    def registry_db(self) -> Path:
        """The appliance's SQLite registry in the data directory."""
        return self.data / "registry.db"

    def snapshot_of(self, version: int) -> Path:
        """The registry as version `version` left it when an upgrade moved away from it."""
        return self.snapshots / f"registry-{version}.db"

    def switch_current(self, version: int) -> None:
        """Point `current` at a version with one rename, so it is always one version or the other."""
        temp = self.root / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(f"versions/{version}", temp)
        os.replace(temp, self.current_link)
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the prefix's lock; a second installer at the same time is refused, not queued."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"another installer is working on {self.root}") from None
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def data_locked(self) -> Iterator[None]:
        """While the data or `current` changes: hold PREFIX/run/data.lock (when run/ exists), which the
        systemd unit's ExecStartPre takes shared, so that a start that socket activation triggers meanwhile
        waits until they agree. Not the prefix's lock: that one is held while the installer starts the
        service and waits for it, which would then wait forever."""
        if not self.run.is_dir():
            yield  # no service was ever started here, nor a unit written: nothing to keep out
            return
        fd = os.open(self.run / "data.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the service holds it shared for an instant only
            yield
        finally:
            os.close(fd)

    def remove_debris(self, state: InstallState) -> list[str]:
        """Remove version folders and temp files left by an interrupted install; return what went."""
        removed: list[str] = []
        complete = {str(v.version) for v in state.installed}
        current = self.current()
        if current is not None:
            complete.add(str(current))  # never remove what runs, whatever the state file says
        if self.versions.is_dir():
            for entry in self.versions.iterdir():
                if entry.name not in complete:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(str(entry))
        temps = [*self.root.glob(".*.tmp"), *self.models.glob("*/.*.tmp"), *self.snapshots.glob(".*.tmp")]
        for entry in temps:
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
        return removed
