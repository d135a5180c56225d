"""The encrypted model file: a streaming AEAD (AES-256-GCM over fixed-size chunks, like age's STREAM).

Layout: header, then chunks. Each chunk is `chunk_size` bytes of plaintext (the last one fewer; 0 only if the
whole plaintext is empty) encrypted to `len + 16` bytes.

Invariants:
- The per-file key is HKDF-SHA256(data key, salt, info=model id), so two files under one data key never
  share a key, and a chunk moved from one file to another fails.
- The nonce of chunk i is i as 11 bytes big-endian plus one byte that is 1 only on the last chunk: reordered,
  dropped, truncated or appended chunks fail.
- The whole header is the associated data of every chunk: a changed chunk size, salt, id or version fails.
- Decryption yields a chunk's plaintext only after its tag has verified.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import StoreIntegrityError

MAGIC = b"APLSTOR\x00"
VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
"""A tampered header must not make the reader allocate gigabytes."""
MAX_MODEL_ID_BYTES = 256
SALT_BYTES = 32
TAG_BYTES = 16
DATA_KEY_BYTES = 32
_FIXED = struct.Struct(">8sHI32sH")  # magic, version, chunk size, salt, model id length
_LAST_INDEX = 2**88 - 1


class Reader(Protocol):
    """Anything with `read(size)`: a file, or a wrapper that hashes what passes through it."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes; b"" at the end."""
        ...


class Writer(Protocol):
    """Anything with `write(data)`: a file, a memfd writer, a digest."""

    def write(self, data: bytes, /) -> int:
        """Write all of `data`."""
        ...


Progress = Callable[[int], None]
"""Called with the number of plaintext bytes done so far."""


@dataclass(frozen=True)
class Header:
    """The authenticated header of one encrypted file."""

    chunk_size: int
    salt: bytes
    model_id: str
    version: int = VERSION

    def encode(self) -> bytes:
        """The header's bytes as written at the start of the file."""
        model_id = self.model_id.encode()
        return _FIXED.pack(MAGIC, self.version, self.chunk_size, self.salt, len(model_id)) + model_id


def is_encrypted_file(handle: BinaryIO) -> bool:
    """Whether the file starts with the store's magic (the position is restored)."""
    position = handle.tell()
    try:
        return handle.read(len(MAGIC)) == MAGIC
    finally:
        handle.seek(position)


def read_header(handle: Reader) -> tuple[Header, bytes]:
    """Parse the header at the handle's position; returns it and its raw bytes (the associated data)."""
    fixed = handle.read(_FIXED.size)
    if len(fixed) != _FIXED.size:
        raise StoreIntegrityError("encrypted model file is truncated inside its header")
    magic, version, chunk_size, salt, id_length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise StoreIntegrityError("not an encrypted model file (wrong magic)")
    if version != VERSION:
        raise StoreIntegrityError(f"unsupported encrypted model format version {version}")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE or id_length > MAX_MODEL_ID_BYTES:
        raise StoreIntegrityError("encrypted model header is damaged (chunk size or id length out of range)")
    raw_id = handle.read(id_length)
    if len(raw_id) != id_length:
        raise StoreIntegrityError("encrypted model file is truncated inside its header")
    try:
        model_id = raw_id.decode()
    except UnicodeDecodeError as error:
        raise StoreIntegrityError("encrypted model header is damaged (model id)") from error
    return Header(chunk_size, salt, model_id, version), fixed + raw_id


def _file_cipher(data_key: bytes, header: Header) -> AESGCM:
    """AES-256-GCM under the per-file key HKDF(data key, salt, info=model id)."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError("a data key is 32 bytes")
    info = b"appliance-store-v1:" + header.model_id.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=info).derive(data_key)
    return AESGCM(key)


def _nonce(index: int, last: bool) -> bytes:
    if index > _LAST_INDEX:
        raise StoreIntegrityError("encrypted model file has too many chunks")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _read_full(handle: Reader, size: int) -> bytes:
    """Read up to `size` bytes, looping over short reads (pipes, network file systems)."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = handle.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def encrypt_stream(
    source: Reader,
    target: Writer,
    data_key: bytes,
    model_id: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> int:
    """Encrypt all of `source` into `target`, one chunk in memory at a time; returns the plaintext size."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_SIZE}")
    header = Header(chunk_size, os.urandom(SALT_BYTES), model_id)
    associated = header.encode()
    cipher = _file_cipher(data_key, header)
    target.write(associated)
    index, done = 0, 0
    chunk = _read_full(source, chunk_size)
    while True:
        # Read one chunk ahead: only then is it known whether the current chunk is the last.
        following = _read_full(source, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        target.write(cipher.encrypt(_nonce(index, last), chunk, associated))
        done += len(chunk)
        if progress is not None:
            progress(done)
        if last:
            return done
        chunk, index = following, index + 1


def decrypt_chunks(source: Reader, data_key: bytes) -> Iterator[bytes]:
    """Yield the verified plaintext chunks of an encrypted file; any failure raises StoreIntegrityError."""
    header, associated = read_header(source)
    cipher = _file_cipher(data_key, header)
    sealed_size = header.chunk_size + TAG_BYTES
    index = 0
    sealed = _read_full(source, sealed_size)
    while True:
        following = _read_full(source, sealed_size) if len(sealed) == sealed_size else b""
        last = not following
        if len(sealed) < TAG_BYTES or (last and index > 0 and len(sealed) == TAG_BYTES):
            raise StoreIntegrityError(f"encrypted model file is truncated or damaged at chunk {index}")
        try:
            plain = cipher.decrypt(_nonce(index, last), sealed, associated)
        except InvalidTag as error:
            raise StoreIntegrityError(
                f"encrypted model file failed authentication at chunk {index} "
                "(tampered, truncated, reordered, or a different key)"
            ) from error
        yield plain
        if last:
            return
        sealed, index = following, index + 1


def decrypt_stream(
    source: Reader, target: Writer, data_key: bytes, *, progress: Progress | None = None
) -> int:
    """Decrypt `source` into `target` chunk by chunk; returns the plaintext size."""
    done = 0
    for plain in decrypt_chunks(source, data_key):
        target.write(plain)
        done += len(plain)
        if progress is not None:
            progress(done)
    return done


def header_model_id(source: Reader) -> str:
    """The model id an encrypted file's header names (unauthenticated until a chunk verifies)."""
    return read_header(source)[0].model_id
