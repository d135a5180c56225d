"""Routes edited through the admin API, kept in the registry so that they outlive a restart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from appliance.registry.schema import Base, utc_now


class RouteRow(Base):
    """One route: a public name, its ordered links and its optional canned answer (migration 0003)."""

    __tablename__ = "routes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    links: Mapped[list[str]] = mapped_column(JSON, default=list)
    canned: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)


@dataclass(frozen=True)
class StoredRoute:
    """A route as the registry holds it."""

    name: str
    links: tuple[str, ...]
    canned: str | None


class RouteStore:
    """Reads and writes the routes an admin set; settings.toml routes are the defaults beneath them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def list(self) -> list[StoredRoute]:
        """Every stored route, by name."""
        with self._sessions() as session:
            rows = session.scalars(select(RouteRow).order_by(RouteRow.name))
            return [StoredRoute(r.name, tuple(r.links), r.canned) for r in rows]

    def put(self, name: str, links: tuple[str, ...], canned: str | None) -> StoredRoute:
        """Create or replace the route `name` in one transaction."""
        with self._sessions.begin() as session:
            row = session.get(RouteRow, name)
            if row is None:
                session.add(RouteRow(name=name, links=list(links), canned=canned))
            else:
                row.links = list(links)
                row.canned = canned
                row.updated_at = utc_now()
        return StoredRoute(name, links, canned)
