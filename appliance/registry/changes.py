"""Knowing cheaply whether the registry changed, so hot reads can be served from memory.

Every request reads its key and the model list; through the ORM that cost the gateway several milliseconds
of CPU per request, which on a small CPU box comes straight out of the decode threads' time and the time
to first token. SQLite's `PRAGMA data_version` changes whenever another connection commits, in this
process (the ORM's pool) or another one (the CLI revoking a key), so a cache checked against it is never
stale: a revoked key fails from the next request on, as before.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class DataVersion:
    """The database's change counter, read on a connection of its own that never writes."""

    def __init__(self, database_path: Path) -> None:
        # Autocommit (no transaction left open), usable from any thread under the lock: handlers that
        # run in a thread pool read the registry too.
        self._connection = sqlite3.connect(database_path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()

    def current(self) -> int:
        """A number that differs from any earlier one once any other connection has committed."""
        with self._lock:
            row = self._connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the watching connection."""
        with self._lock:
            self._connection.close()


class ReadCache(Generic[T]):
    """Values loaded from the database, kept until the database changes."""

    def __init__(self, version: DataVersion) -> None:
        self._version = version
        self._values: dict[object, tuple[int, T]] = {}

    def get(self, key: object, load: Callable[[], T]) -> T:
        """The value for `key`: cached if nothing was committed since it was loaded, else `load()`.

        The version is read before loading: a commit that lands during the load makes the next call
        load again, so a cached value is never older than its version says.
        """
        now = self._version.current()
        cached = self._values.get(key)
        if cached is not None and cached[0] == now:
            return cached[1]
        value = load()
        self._values[key] = (now, value)
        return value

    def forget(self, key: object) -> None:
        """Drop one value (a key that no longer exists must not keep its entry forever)."""
        self._values.pop(key, None)
