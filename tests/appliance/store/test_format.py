"""The streaming AEAD file format: round trips at the edges of a chunk, and every tamper case fails."""

from __future__ import annotations

import io
import os

import pytest

from appliance.errors import StoreIntegrityError
from appliance.store.format import TAG_BYTES, decrypt_chunks, decrypt_stream, encrypt_stream, read_header

CHUNK = 64
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7, 6 * CHUNK]


def _encrypt(plain: bytes, key: bytes, model_id: str = "model-a") -> bytes:
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), sealed, key, model_id, chunk_size=CHUNK)
    return sealed.getvalue()


def _decrypt(sealed: bytes, key: bytes) -> bytes:
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed), plain, key)
    return plain.getvalue()


@pytest.fixture
def key() -> bytes:
    """A random data key."""
    return os.urandom(32)


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(size: int, key: bytes) -> None:
    """Every size comes back byte for byte, and the ciphertext does not contain the plaintext."""
    plain = os.urandom(size)
    sealed = _encrypt(plain, key)
    assert _decrypt(sealed, key) == plain
    if size >= 16:
        assert plain[:16] not in sealed


def test_progress_reports_plaintext_bytes(key: bytes) -> None:
    """Progress is called per chunk with the running total, ending at the plaintext size."""
    seen: list[int] = []
    encrypt_stream(
        io.BytesIO(b"x" * (3 * CHUNK + 1)), io.BytesIO(), key, "m", chunk_size=CHUNK, progress=seen.append
    )
    assert seen == [CHUNK, 2 * CHUNK, 3 * CHUNK, 3 * CHUNK + 1]


def _layout(sealed: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The header length and the (start, end) of every sealed chunk."""
    header, raw = read_header(io.BytesIO(sealed))
    step = header.chunk_size + TAG_BYTES
    chunks = [(start, min(start + step, len(sealed))) for start in range(len(raw), len(sealed), step)]
    return len(raw), chunks


def _flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x01
    return bytes(changed)


def _tamper_cases(sealed: bytes, other: bytes) -> dict[str, bytes]:
    header_length, chunks = _layout(sealed)
    _, other_chunks = _layout(other)
    (a0, a1), (b0, b1) = chunks[0], chunks[1]
    swapped = sealed[:a0] + sealed[b0:b1] + sealed[a0:a1] + sealed[b1:]
    spliced = sealed[:b0] + other[other_chunks[1][0] : other_chunks[1][1]] + sealed[b1:]
    last_start = chunks[-1][0]
    return {
        "bit in magic": _flip(sealed, 0),
        "bit in chunk size": _flip(sealed, 12),
        "bit in salt": _flip(sealed, 20),
        "bit in model id": _flip(sealed, header_length - 1),
        "bit in a chunk": _flip(sealed, a0 + 3),
        "bit in a tag": _flip(sealed, a1 - 1),
        "swapped chunks": swapped,
        "truncated at a chunk boundary": sealed[:last_start],
        "truncated inside a chunk": sealed[:-5],
        "truncated inside the header": sealed[: header_length - 3],
        "extended by a byte": sealed + b"\x00",
        "extended by a copied chunk": sealed + sealed[b0:b1],
        "chunk spliced from another file of the same key": spliced,
        "last chunk dropped": sealed[: chunks[-2][1]] if len(chunks) > 2 else sealed[:last_start],
    }


@pytest.mark.parametrize(
    "case",
    [
        "bit in magic",
        "bit in chunk size",
        "bit in salt",
        "bit in model id",
        "bit in a chunk",
        "bit in a tag",
        "swapped chunks",
        "truncated at a chunk boundary",
        "truncated inside a chunk",
        "truncated inside the header",
        "extended by a byte",
        "extended by a copied chunk",
        "chunk spliced from another file of the same key",
        "last chunk dropped",
    ],
)
def test_tampering_is_an_integrity_error(case: str, key: bytes) -> None:
    """Each change to a valid file raises StoreIntegrityError."""
    plain = os.urandom(4 * CHUNK + 10)
    sealed = _encrypt(plain, key)
    other = _encrypt(os.urandom(len(plain)), key)
    with pytest.raises(StoreIntegrityError):
        _decrypt(_tamper_cases(sealed, other)[case], key)


def test_wrong_key_is_an_integrity_error(key: bytes) -> None:
    """Another data key opens nothing."""
    with pytest.raises(StoreIntegrityError):
        _decrypt(_encrypt(b"weights", key), os.urandom(32))


def test_no_plaintext_of_a_failing_chunk_is_yielded(key: bytes) -> None:
    """With chunk 2 damaged, exactly the chunks before it come out, then the error."""
    plain = os.urandom(4 * CHUNK)
    sealed = _encrypt(plain, key)
    _, chunks = _layout(sealed)
    damaged = _flip(sealed, chunks[2][0] + 1)
    got: list[bytes] = []
    with pytest.raises(StoreIntegrityError):
        got.extend(decrypt_chunks(io.BytesIO(damaged), key))
    assert b"".join(got) == plain[: 2 * CHUNK]
