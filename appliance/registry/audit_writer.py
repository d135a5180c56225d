"""A thread that commits audit rows, so that no request waits on SQLite (a locked or slow database included).

Rows are queued in order and committed in batches; a batch that meets a locked database stays at the head of
the queue and is tried again. `flush` waits for every row queued before it; `close` flushes, then stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from appliance.registry.schema import AuditEventRow

log = logging.getLogger(__name__)

MAX_QUEUED_ROWS = 100_000
"""Rows that may wait for the database; past it new rows are dropped (and counted in the log). Denials are
summed up before they get here, so only a database that stays locked for hours of admin work reaches it."""
RETRY_S = 0.25
"""Pause before a batch that met a locked database is tried again."""
BATCH_ROWS = 500


class AuditWriter:
    """Commits queued audit rows on its own thread; `tick` runs there about every `tick_s`, rows or not."""

    def __init__(
        self, sessions: sessionmaker[Session], tick: Callable[[], None], tick_s: float = 1.0
    ) -> None:
        self._sessions = sessions
        self._tick = tick
        self._tick_s = tick_s
        self._pending: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition()
        self._queued = 0
        self._written = 0
        self._dropped = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def put(self, values: dict[str, Any]) -> None:
        """Queue one row (the columns of AuditEventRow) and return at once."""
        with self._changed:
            if len(self._pending) >= MAX_QUEUED_ROWS:
                self._dropped += 1
                if self._dropped in (1, 1000) or self._dropped % 100_000 == 0:
                    log.error(
                        "audit: the database has not taken rows for a long time; %d dropped", self._dropped
                    )
                return
            self._pending.append(values)
            self._queued += 1
            self._changed.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row queued so far is committed; False if `timeout_s` passed first."""
        with self._changed:
            wanted = self._queued
            return self._changed.wait_for(lambda: self._written >= wanted, timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Commit what is queued (for at most `timeout_s`), then stop; False if rows were left uncommitted."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout_s)
        with self._changed:
            left = len(self._pending)
        if left:
            log.error("audit: %d rows not committed at shutdown (database locked?)", left)
        return left == 0

    def _next_batch(self) -> tuple[list[dict[str, Any]], bool]:
        with self._changed:
            if not self._pending and not self._closing:
                self._changed.wait(self._tick_s)
            return list(self._pending)[:BATCH_ROWS], self._closing

    def _run(self) -> None:
        while True:
            batch, closing = self._next_batch()
            try:
                self._tick()
            except Exception:  # a failed tick (summaries, pruning) must never stop the writer
                log.exception("audit: periodic work failed")
            if not batch:
                if closing:
                    with self._changed:
                        if not self._pending:
                            return
                continue
            try:
                with self._sessions.begin() as session:
                    session.execute(insert(AuditEventRow), batch)
            except OperationalError as error:  # locked past busy_timeout, or a full disk: keep the rows
                log.warning("audit: %d rows wait for the database: %s", len(batch), error.orig)
                time.sleep(RETRY_S)
                continue
            with self._changed:
                for _ in batch:
                    self._pending.popleft()
                self._written += len(batch)
                self._changed.notify_all()
