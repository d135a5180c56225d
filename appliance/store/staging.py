"""Where a model bundle is unpacked while it is verified and encrypted: private folders of the home that
no crash leaves behind past the next store open or gateway start.

A folder (`.bundle-import-*`, mode 0700) holds plaintext weights until they are in the store. Every import
holds a shared flock on the home's `.bundle-imports.lock` from before its folder exists until after it is
removed; `remove_abandoned` takes the exclusive lock without waiting, so it removes folders only while no
import runs in any process (the kernel drops a killed importer's lock), never the folder of one in progress.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

FOLDER_PREFIX = ".bundle-import-"
LOCK_FILE = ".bundle-imports.lock"
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _lock_fd(home: Path) -> int:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def remove_abandoned(home: Path) -> list[Path]:
    """Remove the unpacking folders of imports that were killed; nothing while an import is running."""
    if not home.is_dir() or not any(home.glob(f"{FOLDER_PREFIX}*")):
        return []
    fd = _lock_fd(home)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # an import runs: its folder is not debris; the next open removes any that is
        removed = sorted(home.glob(f"{FOLDER_PREFIX}*"))
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        return removed
    finally:
        os.close(fd)


@contextmanager
def staging_folder(home: Path) -> Iterator[Path]:
    """A fresh private folder of the home for one import, removed when the block ends however it ends.

    In the main thread a SIGTERM or SIGHUP meanwhile ends the block like an error (SystemExit), so a
    stopped import still removes its plaintext; a SIGKILL leaves it to `remove_abandoned` (which every
    import runs first)."""
    remove_abandoned(home)
    fd = _lock_fd(home)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a removal (quick) runs
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=home))  # mode 0700
        try:
            with _ending_signals_exit():
                yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # a signal now ends the process: the next open
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _ending_signals_exit() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit for the block (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    before = {number: signal.signal(number, leave) for number in _ENDING_SIGNALS}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
