"""Orphans in the store folder: what a crash mid-import or mid-re-encryption leaves behind, and its removal.

A write to the store (import, re-encryption) holds a shared flock on the folder's lock file from its first
temp file until the registry points at the result; a key rotation holds the exclusive lock throughout, so no
import wraps its key under the KEK being replaced. Deciding what is an orphan takes the exclusive lock without
waiting: while any writer, in any process, is between those two points, nothing is judged or removed, so the
temp file of an import in progress is never taken for debris. The kernel drops a crashed writer's lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import ConflictError

LOCK_FILE = ".writers.lock"


class StoreBusyError(ConflictError):
    """An import or re-encryption is running; orphans cannot be told apart from its files now."""

    code = "store_busy"


def _lock_fd(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold the writers' shared lock (waits while a clean-up, which is quick, or a key rotation runs)."""
    fd = _lock_fd(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def no_writers(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock, or raise StoreBusyError at once if a writer is active."""
    fd = _lock_fd(folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise StoreBusyError(
                "an import or re-encryption is running in the store; try again when it has finished"
            ) from error
        yield
    finally:
        os.close(fd)


def unreferenced(folder: Path, file_ids: Collection[str], paths: Collection[Path]) -> list[Path]:
    """Entries of the store folder that no registry row names: neither a key's file id nor a model's path.

    An entry is kept when its name up to the first dot is a file id the registry holds (a GGUF's
    `<id>.aplm`, an AWQ model's `<id>.awq/` folder), whichever model version the key belongs to.
    """
    if not folder.exists():
        return []
    kept_paths = {path.resolve() for path in paths}
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_FILE or entry.resolve() in kept_paths:
            continue
        if entry.name.split(".", 1)[0] in file_ids:
            continue
        found.append(entry)
    return found


def remove_entries(entries: Collection[Path]) -> None:
    """Delete files and folders (an interrupted AWQ import leaves a folder)."""
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def entry_bytes(entry: Path) -> int:
    """The size of a file, or of all the files under a folder."""
    if entry.is_dir() and not entry.is_symlink():
        return sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
    return entry.stat().st_size
