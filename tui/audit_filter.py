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


def _who(event: AuditEvent) -> tuple[str, str, str]:
    """The fields the first filter searches: each apart, so a match never spans two of them."""
    return (event.actor_key_id or "-", event.target, event.client)


@dataclass(frozen=True)
class AuditFilter:
    """Substrings of who (actor key id, target or client address) and action, case-insensitive, and an
    earliest time. A key id matches the rows its key wrote and the rows that name it as their target (its
    creation, its revocation): a filter on actor alone missed the row that created the key."""

    actor: str = ""
    action: str = ""
    since: datetime | None = None

    def keep(self, event: AuditEvent) -> bool:
        """Whether the event passes every given criterion."""
        if self.actor and not any(self.actor.lower() in field.lower() for field in _who(event)):
            return False
        if self.action and self.action.lower() not in event.action.lower():
            return False
        return self.since is None or _aware(datetime.fromisoformat(event.time)) >= self.since

    def apply(self, events: list[AuditEvent]) -> list[AuditEvent]:
        """The events that pass, in their order (newest first)."""
        return [e for e in events if self.keep(e)]
