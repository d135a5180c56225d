"""Small file-like adapters the store streams weights through, one chunk at a time."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from appliance.store.format import Reader


class HashingReader:
    """Passes reads through while hashing them, so an import checks what it encrypted against the header."""

    def __init__(self, handle: Reader, update: Callable[[bytes], None]) -> None:
        self._handle = handle
        self._update = update

    def read(self, size: int = -1, /) -> bytes:
        """Read from the wrapped file and hash what was read."""
        data = self._handle.read(size)
        self._update(data)
        return data


class FdWriter:
    """Writes all of each buffer to a raw descriptor (os.write may write less than asked)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes, /) -> int:
        """Write every byte of `data`."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)


class ChunkReader:
    """A Reader over an iterator of chunks (the verified plaintext of another encrypted file)."""

    def __init__(self, chunks: Iterator[bytes], update: Callable[[bytes], None]) -> None:
        self._chunks = chunks
        self._update = update
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes of the chunks, hashed as they pass; b"" at the end."""
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        cut = len(self._buffer) if size < 0 else size
        data, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self._update(data)
        return data
