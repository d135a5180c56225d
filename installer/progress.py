"""A dependency-free progress bar on stderr for the build's hashing and packing."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """`with Progress("hashing", total) as bar: bar.advance(n)`; redraws at most ten times a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.tty = sys.stderr.isatty()
        self._drawn = 0.0

    def __enter__(self) -> Progress:
        return self

    def advance(self, amount: int) -> None:
        """Count `amount` more bytes done."""
        self.done += amount
        now = time.monotonic()
        if self.tty and now - self._drawn > 0.1:
            self._draw("\r")
            self._drawn = now

    def _draw(self, start: str) -> None:
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        sys.stderr.write(f"{start}{self.label:8} [{bar:30}] {share:4.0%} {self.done / 1e6:9.1f} MB")
        sys.stderr.flush()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._draw("\r" if self.tty else "")
        sys.stderr.write("\n")
