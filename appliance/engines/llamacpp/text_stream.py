"""Turning a sequence's token pieces into text that is safe to stream.

Two things must never reach a client: half of a multi-byte UTF-8 character (a token may end mid-character),
and the start of a stop string that later turns out to be one (stop strings may span tokens).
"""

from __future__ import annotations

import codecs


class TextStream:
    """Feeds token bytes in, gives out text that can be sent now; holds back what might still change."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._pending = ""
        self.stopped = False
        """True once a stop string has been seen: the text before it was the last to be released."""
        self.decoded = 0
        """Characters decoded so far (released, held back, or swallowed by a stop string)."""
        self.released = 0
        """Characters released so far."""

    @property
    def text_end(self) -> int:
        """Where the text fed so far ends, in characters, counting a character still partly in bytes."""
        return self.decoded + (1 if self._decoder.getstate()[0] else 0)

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be released now (possibly empty)."""
        decoded = self._decoder.decode(piece)
        self.decoded += len(decoded)
        self._pending += decoded
        released = self._releasable()
        self.released += len(released)
        return released

    def _releasable(self) -> str:
        """Take from the pending text what may go out now."""
        if not self._stop:
            released, self._pending = self._pending, ""
            return released
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            released, self._pending = self._pending[:cut], ""
            return released
        at = len(self._pending) - self._held_back()
        released, self._pending = self._pending[:at], self._pending[at:]
        return released

    def _held_back(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        tail_max = min(len(self._pending), self._longest_stop - 1)
        for length in range(tail_max, 0, -1):
            tail = self._pending[-length:]
            if any(stop.startswith(tail) for stop in self._stop):
                return length
        return 0

    def flush(self) -> str:
        """At the end of generation (not by a stop string): everything still held, completed."""
        if self.stopped:
            return ""
        released = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.decoded = self.released = self.released + len(released)
        return released
