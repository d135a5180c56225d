"""Filtering audit events by actor, action and time, as the audit screen's fields say."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tui.schemas import AuditEvent

RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _aware(moment: datetime) -> datetime:
    # The gateway writes UTC; an ISO time without an offset is UTC too.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime | None:
    """`15m`, `2h`, `1d` (before `now`) or an ISO date/time; None for empty; ValueError if unreadable."""
    text = text.strip()
    if not text:
        return None
    relative = RELATIVE.match(text)
    if relative:
        return now - timedelta(**{UNITS[relative.group(2)]: int(relative.group(1))})
    return _aware(datetime.fromisoformat(text))


@dataclass(frozen=True)
class AuditFilter:
    """Substrings of actor (key id or client address) and action, case-insensitive, and an earliest time."""

    actor: str = ""
    action: str = ""
    since: datetime | None = None

    def keep(self, event: AuditEvent) -> bool:
        """Whether the event passes every given criterion."""
        if self.actor and self.actor.lower() not in f"{event.actor_key_id or '-'} {event.client}".lower():
            return False
        if self.action and self.action.lower() not in event.action.lower():
            return False
        return self.since is None or _aware(datetime.fromisoformat(event.time)) >= self.since

    def apply(self, events: list[AuditEvent]) -> list[AuditEvent]:
        """The events that pass, in their order (newest first)."""
        return [e for e in events if self.keep(e)]
