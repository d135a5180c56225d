"""The audit log: every admin action and every failed authentication, append-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.registry.schema import AuditEventRow


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


class AuditLog:
    """Writes and reads audit events."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(
        self,
        action: str,
        *,
        outcome: str,
        actor_key_id: str | None = None,
        target: str = "",
        detail: str = "",
    ) -> None:
        """Append one event; `outcome` is `success`, `denied` or `failure`."""
        with self._sessions.begin() as session:
            session.add(
                AuditEventRow(
                    action=action, outcome=outcome, actor_key_id=actor_key_id, target=target, detail=detail
                )
            )

    def recent(self, limit: int = 100) -> list[AuditEvent]:
        """The newest `limit` events, newest first."""
        with self._sessions() as session:
            query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
            return [
                AuditEvent(r.id, r.time, r.actor_key_id, r.action, r.target, r.outcome, r.detail)
                for r in session.scalars(query)
            ]
