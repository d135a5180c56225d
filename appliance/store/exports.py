"""Writing a decrypted model where an admin asks: a new file or folder, complete or absent, never a link.

An export is plaintext weights leaving the store, to a path chosen through the admin API. So it never
overwrites (a link or an existing file at the target refuses it, checked by the kernel at the moment the
name is taken, not by an earlier look), and never leaves half a file: the plaintext goes to a temp file in
the target's folder, is fsynced, and only then gets its name, by a hard link or a rename that cannot
replace anything.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.errors import ConflictError
from appliance.safe_files import UnsafePathError, check_place
from appliance.store.folders import remove_tree
from appliance.store.streams import FdWriter

AT_FDCWD = -100
RENAME_NOREPLACE = 1
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def export_target(target: Path, default_name: str) -> Path:
    """The path an export writes: `target`, or `default_name` inside it when it is a folder; refused when
    it is a link, exists already, or lies in a kernel folder."""
    target = Path(os.path.abspath(target))
    try:
        mode: int | None = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise UnsafePathError(f"{target}: a symbolic link; export follows none", param="to")
    if mode is not None and stat.S_ISDIR(mode):
        target = target / default_name
    if os.path.lexists(target):
        raise ConflictError(f"{target} exists already; export does not overwrite", param="to")
    check_place(Path(os.path.realpath(target.parent)), target, (), "to")
    return target


def _refused(target: Path) -> ConflictError:
    return ConflictError(f"{target} exists already; export does not overwrite", param="to")


def _rename_no_replace(source: Path, target: Path) -> bool:
    """renameat2(RENAME_NOREPLACE): False where the kernel or file system does not offer it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise _refused(target)
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(target))


def _sync_folder(folder: Path) -> None:
    """Make the new name durable: the file's data was fsynced, its directory entry is in the folder."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(target: Path, chunks: Iterator[bytes]) -> Path:
    """Write `chunks` to the new file `target` (mode 0600): all of it under that name, or nothing."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            writer = FdWriter(fd)
            for chunk in chunks:
                writer.write(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target, follow_symlinks=False)  # fails with EEXIST whatever is there, link or not
        except FileExistsError:
            raise _refused(target) from None
        except OSError as error:  # a file system without hard links
            if error.errno not in _UNSUPPORTED or not _rename_no_replace(tmp, target):
                raise
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(target.parent)
    return target


def write_new_folder(target: Path, fill: Callable[[Path], object]) -> Path:
    """Let `fill` write a new temp folder (mode 0700), then give it the name `target` without replacing."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    tmp.mkdir(mode=0o700)
    try:
        fill(tmp)
        if not _rename_no_replace(tmp, target):
            # No RENAME_NOREPLACE here: rename(2) still refuses a file or a folder with content at the
            # target; what it could replace, in the moment after this look, is only an empty folder.
            if os.path.lexists(target):
                raise _refused(target)
            os.rename(tmp, target)
    except BaseException:
        remove_tree(tmp)
        raise
    _sync_folder(target.parent)
    return target
