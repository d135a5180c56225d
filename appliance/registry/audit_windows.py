"""Summing up repeated denials, so a flood of bad keys writes a bounded number of audit rows.

A denial is keyed by (action, client address, key id, reason). The first one of a key opens a window: it gets
its own row at once, so an admin sees an attack begin. Later ones within the window only count; when it ends,
one more row carries their count. Each key thus writes at most two rows per window, and the number of keys is
bounded too: past `max_keys` open windows, new addresses share one key with the address `*`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 256
"""Open windows at once; more addresses than this in one window are summed up as `*`."""
MANY_CLIENTS = "*"


@dataclass(frozen=True)
class DenialKey:
    """What makes two denials alike."""

    action: str
    client: str
    actor_key_id: str | None
    reason: str


@dataclass(frozen=True)
class DenialSummary:
    """The denials of one window after its first: how many, and the target of the last."""

    key: DenialKey
    more: int
    last_target: str
    window_s: float

    @property
    def detail(self) -> str:
        """The reason with the count, as the summary row's detail."""
        return f"{self.key.reason} ({self.more} more in the {self.window_s:g} s after the first)"


@dataclass
class _Window:
    opened: float
    more: int = 0
    last_target: str = ""


class DenialWindows:
    """Open windows by key; thread-safe (requests add, the audit writer's tick sweeps)."""

    def __init__(
        self, window_s: float, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._open: dict[DenialKey, _Window] = {}
        self._lock = threading.Lock()

    def add(self, key: DenialKey, target: str) -> DenialKey | None:
        """Count one denial; the key to write a row for now if it opens a window, else None."""
        with self._lock:
            if key not in self._open and len(self._open) >= self._max_keys:
                key = DenialKey(key.action, MANY_CLIENTS, key.actor_key_id, key.reason)
            window = self._open.get(key)
            if window is None:
                self._open[key] = _Window(self._clock())
                return key
            window.more += 1
            window.last_target = target
            return None

    def expired(self) -> list[DenialSummary]:
        """Close every window that has ended; a summary for each that counted more than its first."""
        now = self._clock()
        with self._lock:
            ended = [k for k, w in self._open.items() if now - w.opened >= self.window_s]
            return self._close(ended)

    def drain(self) -> list[DenialSummary]:
        """Close every window (at shutdown): nothing counted is lost."""
        with self._lock:
            return self._close(list(self._open))

    def _close(self, keys: list[DenialKey]) -> list[DenialSummary]:
        closed = [(key, self._open.pop(key)) for key in keys]
        return [DenialSummary(k, w.more, w.last_target, self.window_s) for k, w in closed if w.more]
