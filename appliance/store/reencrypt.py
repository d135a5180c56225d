"""Writing a stored model's file again under a new data key, and the key rotation that does it for all.

One re-encryption: the new file (or AWQ folder) is written to a temp name in the store folder (mode 0600),
streamed one chunk at a time, fsynced, decrypted end to end and checked against the model's size and SHA-256,
renamed to its final name and the folder fsynced, all before the registry is pointed at it. Until that commit
the old file and its key stay the model's, so a crash at any point leaves the model readable; a crash leaves
at most a temp file, which `appliance store clean` removes.

A rotation (`ModelStore.rotate_key`, under the store's exclusive lock, so no import runs meanwhile) has two
steps, each crash-safe:
1. every current data key is re-wrapped under the new KEK in one transaction (kek.py; a new key file is
   written beside the old as `store.key.new` first and installed after the commit). From then on the old KEK
   unwraps nothing in the registry.
2. each model version in turn is re-encrypted as above under a fresh data key, wrapped by the new KEK.
So new data keys are never wrapped under the old KEK, an old copy of `store.key` together with an old copy of
the registry opens only files that no longer exist, and an interruption anywhere (between files or inside
one) leaves every model readable with the new key; running the rotation again, under yet another KEK,
finishes it. The registry's deleted rows are zeroed (`secure_delete`) and its write-ahead log is truncated at
the end, so the replaced wrapped keys do not stay in the database files either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.errors import ApplianceError, StoreIntegrityError
from appliance.registry.models import ModelInfo
from appliance.store.format import Progress, Reader, decrypt_chunks, encrypt_stream
from appliance.store.streams import ChunkReader, FdWriter

SUFFIX = ".aplm"
RotationStep = Callable[[int, int, ModelInfo, int], Progress | None]
"""Told before each model a rotation re-encrypts: its number (from 1), how many, the model and its plaintext
bytes; returns the progress callback for that model's bytes, or None."""


class RotationIncompleteError(ApplianceError):
    """A rotation changed the KEK but stopped before every model had a new data key; running it again
    finishes it. Every model still opens with the new key."""

    code = "store_rotation_incomplete"


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename into it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encrypt_into(
    tmp: Path, reader: Reader, data_key: bytes, file_id: str, chunk_size: int, progress: Progress | None
) -> None:
    """Encrypt `reader` into the new file `tmp` (mode 0600, fsynced); the caller renames or removes it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        encrypt_stream(reader, FdWriter(fd), data_key, file_id, chunk_size=chunk_size, progress=progress)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file(path: Path, data_key: bytes, model: ModelInfo, progress: Progress | None) -> None:
    """Decrypt `path` end to end under `data_key` and compare with the model's size and SHA-256."""
    digest, done = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for chunk in decrypt_chunks(handle, data_key):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    if done != model.size_bytes or digest.hexdigest() != model.sha256:
        raise StoreIntegrityError(f"the re-encrypted file of {model.name!r} does not verify")


def reencrypt_file(
    folder: Path,
    model: ModelInfo,
    plain: Iterator[bytes],
    data_key: bytes,
    file_id: str,
    chunk_size: int,
    progress: Progress | None = None,
    verify_progress: Progress | None = None,
) -> Path:
    """Encrypt the verified plaintext chunks `plain` of a GGUF model into `<file id>.aplm` under `data_key`,
    one chunk in memory at a time; returns the new file, checked and durable (the old one is untouched)."""
    final = folder / f"{file_id}{SUFFIX}"
    tmp = folder / f".{file_id}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        encrypt_into(tmp, ChunkReader(plain, digest.update), data_key, file_id, chunk_size, progress)
        if digest.hexdigest() != model.sha256:
            raise StoreIntegrityError(f"model {model.name!r} decrypts, but not to the file that was imported")
        check_file(tmp, data_key, model, verify_progress)
        os.replace(tmp, final)
        sync_folder(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return final
