"""Tables of the registry. Changing one means adding an Alembic migration beside the first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utc_now() -> datetime:
    """The current time, timezone-aware, as every row stores it."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class ModelRow(Base):
    """One registered model file (one version of a name) and what its header says about it."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32), default="1")
    active: Mapped[bool] = mapped_column(default=True)
    """The version the name serves; exactly one row per name is active."""
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    """When this version last became active: rollback goes to the most recent inactive one."""
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    format: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(64))
    quantization: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    context_length: Mapped[int] = mapped_column(Integer)
    has_chat_template: Mapped[bool]
    chat_template_override: Mapped[str | None] = mapped_column(Text, default=None)
    tool_parser: Mapped[str | None] = mapped_column(String(32), default=None)
    """vLLM's tool-call parser for this model: NULL or `auto` follows the architecture, `none` offers none."""
    keep_alive_s: Mapped[float | None] = mapped_column(Float, default=None)
    """Idle seconds before the gateway unloads it: NULL follows `[residency] keep_alive_s`, -1 = pinned."""
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret part is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEventRow(Base):
    """One audited action: who (key id, if known) did what to which target, and how it ended."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    actor_key_id: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    client: Mapped[str] = mapped_column(String(64), default="")
    """The address a refused request came from, as the socket said ("" for other events)."""
