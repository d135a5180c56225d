"""Opening the files an admin names for an import: no link followed, regular files only, no kernel files.

A path in an import request is chosen by whoever holds an admin key, and the gateway may run with more
rights than they have on the box: without these rules a link, a FIFO or `/proc/self/environ` would be
read into the store (and could be exported again), or would hang the import. Every check is made on the
opened descriptor, never on the name alone, so swapping a file for a link between check and use gains
nothing: what is read is what was checked.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from appliance.errors import ApplianceError, InvalidRequestError, ModelFileError

KERNEL_FOLDERS = (Path("/proc"), Path("/sys"))
"""Pseudo-files there look regular (`stat` says so) but are the kernel's and the processes' own state."""
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
_OPEN_FLAGS = _READ_FLAGS | os.O_NONBLOCK


class UnsafePathError(InvalidRequestError):
    """A path an import or export may not use: a link, not a regular file, a kernel file, not allowed."""

    code = "unsafe_path"


class FileTooLargeError(ModelFileError):
    """A file that must be small (a model's config.json) is larger than its limit; it is not read."""

    code = "file_too_large"


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both already resolved)."""
    return path == folder or folder in path.parents


def _real_path(fd: int, shown: Path) -> Path:
    """Where the descriptor really points: the kernel's answer, not a second look-up of the name."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # no /proc mounted: the name resolved now is the best there is
        return Path(os.path.realpath(shown))


def check_place(real: Path, shown: Path, allowed: tuple[Path, ...], param: str) -> None:
    """Refuse kernel files, and paths outside the allowed import folders when there are any."""
    if any(is_inside(real, folder) for folder in KERNEL_FOLDERS):
        raise UnsafePathError(f"{shown}: a kernel pseudo-file, not a model", param=param)
    roots = [Path(os.path.realpath(folder)) for folder in allowed]
    if roots and not any(is_inside(real, root) for root in roots):
        raise UnsafePathError(
            f"{shown}: not inside an allowed import folder ([store] import_folders)", param=param
        )


def _open_error(error: OSError, shown: Path, param: str) -> ApplianceError:
    if error.errno == errno.ELOOP:
        return UnsafePathError(f"{shown}: a symbolic link; imports follow none", param=param)
    return ModelFileError(f"{shown}: cannot read ({error.strerror})", param=param)


def open_source_file(
    path: Path, *, allowed: tuple[Path, ...] = (), within: Path | None = None, param: str = "path"
) -> BinaryIO:
    """Open a model file for reading: not a link, a regular file, not a kernel file, in `allowed` (if
    any) and under `within` (if given, a resolved folder); the caller closes it."""
    shown = Path(os.path.abspath(path))
    check_place(shown, shown, (), param)  # refuse /proc by name before even opening it
    try:
        fd = os.open(shown, _OPEN_FLAGS)
    except OSError as error:
        raise _open_error(error, shown, param) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"{shown}: {_kind(mode)}, not a regular file", param=param)
        real = _real_path(fd, shown)
        check_place(real, shown, allowed, param)
        if within is not None and not is_inside(real, within):
            raise UnsafePathError(f"{shown}: leads outside {within}", param=param)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small_file(path: Path, limit: int, *, within: Path | None = None) -> bytes:
    """A whole small file (a config.json), opened by the rules above and never more than `limit` bytes."""
    with open_source_file(path, within=within) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(f"{path}: larger than {limit} bytes; not a model's configuration")
    return data


def open_source_folder(path: Path, *, allowed: tuple[Path, ...] = (), param: str = "path") -> Path:
    """The resolved path of a model folder an import may read: not a link, a folder, in `allowed`."""
    shown = Path(os.path.abspath(path))
    check_place(shown, shown, (), param)
    try:
        fd = os.open(shown, _READ_FLAGS | os.O_DIRECTORY)
    except OSError as error:
        if error.errno == errno.ENOTDIR and os.path.islink(shown):  # O_NOFOLLOW|O_DIRECTORY says ENOTDIR
            raise UnsafePathError(f"{shown}: a symbolic link; imports follow none", param=param) from None
        if error.errno == errno.ENOTDIR:
            raise UnsafePathError(f"{shown}: not a folder", param=param) from None
        raise _open_error(error, shown, param) from None
    try:
        real = _real_path(fd, shown)
    finally:
        os.close(fd)
    check_place(real, shown, allowed, param)
    return real


def folder_files(
    path: Path, *, allowed: tuple[Path, ...] = (), param: str = "path"
) -> list[tuple[str, Path]]:
    """Every file under a model folder as (relative name, path), sorted; a link, FIFO, socket or device
    anywhere in it refuses the whole folder (copy it with `cp -rL` to import what links point to)."""
    root = open_source_folder(path, allowed=allowed, param=param)
    found: list[tuple[str, Path]] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(mode):
                    found.append((Path(entry.path).relative_to(root).as_posix(), Path(entry.path)))
                else:
                    raise UnsafePathError(
                        f"{entry.path}: {_kind(mode)} in the model folder; imports read regular files only",
                        param=param,
                    )
    if not found:
        raise ModelFileError(f"{path}: the folder holds no files")
    return sorted(found)


def is_folder(path: Path) -> bool:
    """Whether `path` itself is a folder (a link to one is not: imports follow no link)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def size_of(files: list[tuple[str, Path]]) -> int:
    """Bytes of the listed files, as the listing saw them (no link is followed)."""
    return sum(file.lstat().st_size for _, file in files)
