"""AWQ model folders in the store: every file encrypted on its own, plus an encrypted manifest.

A folder model lives in `store/<file id>.awq/`: `<n>.aplm` for the n-th file of the source folder and
`manifest.aplm`, the list of the original relative names with their sizes and SHA-256. All of them are in the
streaming format of format.py under the model's one data key; each has its own salt and its own id in the
header (`<file id>/<n>`, `<file id>/manifest`), so each gets its own key and no file can stand in for another.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import msgspec

from appliance.errors import StoreIntegrityError
from appliance.safe_files import folder_files, open_source_file, open_source_folder
from appliance.store.format import Progress, decrypt_chunks, encrypt_stream
from appliance.store.reencrypt import sync_folder
from appliance.store.streams import ChunkReader, FdWriter, HashingReader

FOLDER_SUFFIX = ".awq"
MANIFEST = "manifest.aplm"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""A damaged or hostile store must not make the reader hold an unbounded manifest in memory."""


class FolderFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of a folder model: its relative name in the original folder and what it must decrypt to."""

    name: str
    stored: str
    size: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The files of a folder model, in the order they were imported."""

    files: list[FolderFile]

    def digest(self) -> str:
        """One SHA-256 over every file's name, size and hash: what the registry keeps as the model's hash."""
        lines = sorted(f"{f.name}\0{f.size}\0{f.sha256}\n" for f in self.files)
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def source_files(folder: Path, allowed: tuple[Path, ...] = ()) -> tuple[Path, list[tuple[str, Path]]]:
    """The resolved folder and every regular file under it, by name; a link or special file in it refuses
    the folder (appliance/safe_files.py): a link could bring any file of the box into the store."""
    root = open_source_folder(folder, allowed=allowed)
    return root, folder_files(root)


def _new_private_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _encrypt_into_new_file(
    path: Path,
    reader: HashingReader | ChunkReader,
    data_key: bytes,
    label: str,
    chunk_size: int,
    progress: Progress | None,
) -> int:
    """Encrypt what `reader` yields into the new private file `path`, synced before it returns its size."""
    fd = _new_private_file(path)
    try:
        size = encrypt_stream(reader, FdWriter(fd), data_key, label, chunk_size=chunk_size, progress=progress)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _offset(progress: Progress | None, base: int) -> Progress | None:
    """Progress over the whole folder from the progress within one of its files."""
    if progress is None:
        return None
    report = progress
    return lambda done: report(base + done)


def encrypt_folder(
    source: Path,
    target: Path,
    data_key: bytes,
    file_id: str,
    chunk_size: int,
    progress: Progress | None,
    allowed: tuple[Path, ...] = (),
) -> Manifest:
    """Encrypt every file of `source` into the new folder `target` (mode 0700), manifest last."""
    root, listed = source_files(source, allowed)
    target.mkdir(mode=0o700)
    files, done = [], 0
    for index, (name, path) in enumerate(listed):
        stored, digest = f"{index}.aplm", hashlib.sha256()
        with open_source_file(path, within=root) as plain:
            size = _encrypt_into_new_file(
                target / stored,
                HashingReader(plain, digest.update),
                data_key,
                f"{file_id}/{index}",
                chunk_size,
                _offset(progress, done),
            )
        files.append(FolderFile(name, stored, size, digest.hexdigest()))
        done += size
    manifest = Manifest(files)
    _write_manifest(target, manifest, data_key, file_id)
    return manifest


def _write_manifest(target: Path, manifest: Manifest, data_key: bytes, file_id: str) -> None:
    """Encrypt the manifest into `target/manifest.aplm` (written last: a folder without one is incomplete)."""
    fd = _new_private_file(target / MANIFEST)
    try:
        encoded = msgspec.json.encode(manifest)
        encrypt_stream(_BytesReader(encoded), FdWriter(fd), data_key, f"{file_id}/manifest")
        os.fsync(fd)
    finally:
        os.close(fd)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, size: int = -1, /) -> bytes:
        cut = len(self._data) if size < 0 else size
        part, self._data = self._data[:cut], self._data[cut:]
        return bytes(part)


def read_manifest(folder: Path, data_key: bytes) -> Manifest:
    """The decrypted, authenticated manifest of a stored folder model."""
    parts, size = [], 0
    try:
        with (folder / MANIFEST).open("rb") as handle:
            for chunk in decrypt_chunks(handle, data_key):
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise StoreIntegrityError(f"{folder}: the manifest is too large")
                parts.append(chunk)
    except FileNotFoundError as error:
        raise StoreIntegrityError(f"{folder}: the encrypted folder or its manifest is missing") from error
    try:
        manifest = msgspec.json.decode(b"".join(parts), type=Manifest)
    except msgspec.DecodeError as error:
        raise StoreIntegrityError(f"{folder}: the manifest is damaged") from error
    for entry in manifest.files:
        name = PurePosixPath(entry.name)
        if name.is_absolute() or ".." in name.parts or "/" in entry.stored:
            raise StoreIntegrityError(f"{folder}: the manifest names a path outside the folder")
    return manifest


def _check(
    entry: FolderFile, chunks: Iterator[bytes], sink: FdWriter | None, progress: Progress | None, base: int
) -> int:
    """Consume one file's chunks (writing them to `sink`) and compare with the manifest's size and hash."""
    digest, done = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(base + done)
    if done != entry.size or digest.hexdigest() != entry.sha256:
        raise StoreIntegrityError(f"{entry.name} decrypts, but not to the file that was imported")
    return done


def verify_folder(folder: Path, data_key: bytes, progress: Progress | None = None) -> Manifest:
    """Decrypt every file of a folder model and check it against the manifest; returns the manifest."""
    manifest, done = read_manifest(folder, data_key), 0
    for entry in manifest.files:
        with (folder / entry.stored).open("rb") as handle:
            done += _check(entry, decrypt_chunks(handle, data_key), None, progress, done)
    return manifest


def decrypt_folder(folder: Path, data_key: bytes, target: Path) -> Manifest:
    """Re-create the original folder's files under the existing folder `target` (files mode 0600)."""
    manifest = read_manifest(folder, data_key)
    for entry in manifest.files:
        path = target / entry.name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = _new_private_file(path)
        try:
            with (folder / entry.stored).open("rb") as handle:
                _check(entry, decrypt_chunks(handle, data_key), FdWriter(fd), None, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    return manifest


def import_folder(
    store_folder: Path,
    source: Path,
    data_key: bytes,
    file_id: str,
    chunk_size: int,
    progress: Progress | None,
    allowed: tuple[Path, ...] = (),
) -> tuple[Path, Manifest]:
    """Encrypt `source` into a temp folder in the store, then rename it to `<file id>.awq` atomically."""
    final = store_folder / f"{file_id}{FOLDER_SUFFIX}"
    tmp = store_folder / f".{file_id}.{os.getpid()}.tmp"
    try:
        manifest = encrypt_folder(source, tmp, data_key, file_id, chunk_size, progress, allowed)
        os.replace(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    return final, manifest


def _reencrypt_files(
    old: Path,
    old_key: bytes,
    target: Path,
    data_key: bytes,
    file_id: str,
    chunk_size: int,
    progress: Progress | None,
) -> Manifest:
    """Every file of the stored folder `old` into the new folder `target` under `data_key`, each checked
    against the old manifest as its plaintext streams through; the new manifest last."""
    manifest, files, done = read_manifest(old, old_key), [], 0
    target.mkdir(mode=0o700)
    for index, entry in enumerate(manifest.files):
        stored, digest = f"{index}.aplm", hashlib.sha256()
        try:
            source = (old / entry.stored).open("rb")
        except FileNotFoundError as error:
            raise StoreIntegrityError(f"{old}: {entry.stored} ({entry.name}) is missing") from error
        with source as handle:
            size = _encrypt_into_new_file(
                target / stored,
                ChunkReader(decrypt_chunks(handle, old_key), digest.update),
                data_key,
                f"{file_id}/{index}",
                chunk_size,
                _offset(progress, done),
            )
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise StoreIntegrityError(f"{entry.name} decrypts, but not to the file that was imported")
        files.append(FolderFile(entry.name, stored, size, entry.sha256))
        done += size
    new = Manifest(files)
    _write_manifest(target, new, data_key, file_id)
    return new


def reencrypt_folder(
    store_folder: Path,
    old: Path,
    old_key: bytes,
    data_key: bytes,
    file_id: str,
    chunk_size: int,
    progress: Progress | None = None,
) -> Path:
    """Re-encrypt a stored folder model into a new `<file id>.awq` under `data_key`, streamed, checked again
    under the new key, and renamed into place atomically; the old folder is left for the caller to remove."""
    final = store_folder / f"{file_id}{FOLDER_SUFFIX}"
    tmp = store_folder / f".{file_id}.{os.getpid()}.tmp"
    try:
        _reencrypt_files(old, old_key, tmp, data_key, file_id, chunk_size, progress)
        if verify_folder(tmp, data_key).digest() != read_manifest(old, old_key).digest():
            raise StoreIntegrityError(f"{old}: the re-encrypted folder does not verify")
        sync_folder(tmp)
        os.replace(tmp, final)
        sync_folder(store_folder)
    except BaseException:
        remove_tree(tmp)
        remove_tree(final)
        raise
    return final


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it; nothing if it is not there."""
    if path.exists():
        shutil.rmtree(path)
