"""The audit log: every admin action and every failed authentication, append-only, bounded in size.

Once the gateway `start`s the log, rows are committed by a thread of their own (audit_writer.py), so a
request never waits on SQLite; `recent` and `close` wait for what is queued, so what was recorded is read
back and nothing is lost on a clean shutdown. Without `start` (the CLI) a row is committed
before `record` returns. Repeated denials are summed up per client address (audit_windows.py), and old rows
are pruned by age and count, denied rows first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.registry.audit_windows import DenialKey, DenialSummary, DenialWindows
from appliance.registry.audit_writer import AuditWriter
from appliance.registry.schema import AuditEventRow, utc_now
from appliance.settings import AuditSettings

MAX_TARGET_CHARS = 200
"""A target (often a request path: whatever a client sent) is stored up to this long, its end marked `…`."""
MAX_DETAIL_CHARS = 2000
MAX_CLIENT_CHARS = 64
PRUNE_INTERVAL_S = 3600.0
FLUSH_TIMEOUT_S = 5.0
"""How long `recent` waits for queued rows (a database locked for longer shows what it has)."""


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log."""

    id: int
    time: datetime
    actor_key_id: str | None
    action: str
    target: str
    outcome: str
    detail: str
    client: str = ""


def capped(text: str, limit: int) -> str:
    """`text` with control characters escaped (`\\n`), at most `limit` characters, a cut marked `…`."""
    head = text[: limit + 1]
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in head)
    if len(shown) <= limit and len(head) == len(text):
        return shown
    return shown[: limit - 1] + "…"


def _rowcount(result: Result[Any]) -> int:
    """Rows a DELETE removed (a DML statement's result is a CursorResult)."""
    return cast("CursorResult[Any]", result).rowcount


class AuditLog:
    """Writes and reads audit events."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._settings = AuditSettings()
        self._windows = DenialWindows(self._settings.failure_window_s)
        self._writer: AuditWriter | None = None
        self._next_prune = 0.0

    def start(self, settings: AuditSettings) -> None:
        """Prune by `settings`, then commit from a thread of its own (the gateway's lifespan calls this)."""
        if self._writer is not None:
            return
        self._settings = settings
        self._windows = DenialWindows(settings.failure_window_s)
        self.prune()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
        self._writer = AuditWriter(self._sessions, self._tick)
        self._writer.start()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Write the open windows' counts and what is queued, then stop the thread; False if rows are left."""
        self._write_summaries(self._windows.drain())
        writer, self._writer = self._writer, None
        return writer.close(timeout_s) if writer is not None else True

    def flush(self, timeout_s: float | None = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every row recorded so far is committed; False if `timeout_s` passed first."""
        writer = self._writer
        return writer.flush(timeout_s) if writer is not None else True

    def record(
        self,
        action: str,
        *,
        outcome: str,
        actor_key_id: str | None = None,
        target: str = "",
        detail: str = "",
        client: str = "",
    ) -> None:
        """Append one event; `outcome` is `success`, `denied` or `failure`."""
        self._put(
            {
                "time": utc_now(),
                "action": action,
                "outcome": outcome,
                "actor_key_id": actor_key_id,
                "target": capped(target, MAX_TARGET_CHARS),
                "detail": capped(detail, MAX_DETAIL_CHARS),
                "client": capped(client, MAX_CLIENT_CHARS),
            }
        )

    def record_denial(
        self, action: str, *, client: str, target: str, reason: str, actor_key_id: str | None = None
    ) -> None:
        """A denied request, summed up with alike ones (action, address, key and reason) in its window."""
        self._write_summaries(self._windows.expired())
        opened = self._windows.add(DenialKey(action, client, actor_key_id, reason), target)
        if opened is not None:
            self.record(
                action,
                outcome="denied",
                actor_key_id=actor_key_id,
                target=target,
                detail=reason,
                client=opened.client,
            )

    def recent(self, limit: int = 100) -> list[AuditEvent]:
        """The newest `limit` events, newest first (after what is queued has been committed)."""
        self.flush()
        with self._sessions() as session:
            query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
            return [
                AuditEvent(r.id, r.time, r.actor_key_id, r.action, r.target, r.outcome, r.detail, r.client)
                for r in session.scalars(query)
            ]

    def prune(self, now: datetime | None = None) -> int:
        """Delete rows past `retention_days`, then the oldest past `max_rows`, denied ones first; how many."""
        retention_days, max_rows = self._settings.retention_days, self._settings.max_rows
        with self._sessions.begin() as session:
            deleted = 0
            if retention_days:
                cutoff = (now or utc_now()) - timedelta(days=retention_days)
                deleted += _rowcount(
                    session.execute(delete(AuditEventRow).where(AuditEventRow.time < cutoff))
                )
            for denied_only in (True, False):
                over = (session.scalar(select(func.count(AuditEventRow.id))) or 0) - max_rows
                if over <= 0:
                    break
                oldest = select(AuditEventRow.id).order_by(AuditEventRow.id).limit(over)
                if denied_only:
                    oldest = oldest.where(AuditEventRow.outcome == "denied")
                deleted += _rowcount(
                    session.execute(delete(AuditEventRow).where(AuditEventRow.id.in_(oldest)))
                )
            return deleted

    def _put(self, values: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None:
            writer.put(values)
            return
        with self._sessions.begin() as session:
            session.execute(insert(AuditEventRow), [values])

    def _write_summaries(self, summaries: list[DenialSummary]) -> None:
        for s in summaries:
            self.record(
                s.key.action,
                outcome="denied",
                actor_key_id=s.key.actor_key_id,
                target=s.last_target,
                detail=s.detail,
                client=s.key.client,
            )

    def _tick(self) -> None:
        """On the writer's thread: write the counts of ended windows, and prune once an interval."""
        self._write_summaries(self._windows.expired())
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
            self.prune()
