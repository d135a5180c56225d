"""The encrypted store's records: the fingerprint of its key-encryption key and each model's wrapped key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, delete, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from appliance.registry.schema import Base, ModelRow, utc_now


class StoreKekRow(Base):
    """The one KEK the store's data keys are wrapped with: its fingerprint, mode and scrypt salt."""

    __tablename__ = "store_kek"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))
    scrypt_salt: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    scrypt_n: Mapped[int | None] = mapped_column(Integer, default=None)
    """scrypt's cost parameter N; None for a store made before it was recorded (which used 2^15)."""
    changed_at: Mapped[datetime] = mapped_column(default=utc_now)


class ModelKeyRow(Base):
    """An encrypted model's data key, wrapped by the store's KEK, and its file in the store folder."""

    __tablename__ = "model_keys"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), unique=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_fingerprint: Mapped[str] = mapped_column(String(32))
    stored_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


@dataclass(frozen=True)
class KekRecord:
    """What the registry knows about the store's KEK (never the key itself)."""

    fingerprint: str
    mode: str
    scrypt_salt: bytes | None
    scrypt_n: int | None = None
    """In passphrase mode, scrypt's N (None: recorded before the cost was, so the old 2^15)."""


@dataclass(frozen=True)
class ModelKey:
    """One encrypted model's key record."""

    model_id: int
    file_id: str
    wrapped_key: bytes
    kek_fingerprint: str
    stored_bytes: int


def _key(row: ModelKeyRow) -> ModelKey:
    return ModelKey(row.model_id, row.file_id, row.wrapped_key, row.kek_fingerprint, row.stored_bytes)


class StoreKeys:
    """Reads and writes the store's key records; a rotation rewrites them all in one transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def kek(self) -> KekRecord | None:
        """The recorded KEK, or None before the store's first use."""
        with self._sessions() as session:
            row = session.get(StoreKekRow, 1)
            if row is None:
                return None
            return KekRecord(row.fingerprint, row.mode, row.scrypt_salt, row.scrypt_n)

    def set_kek(self, record: KekRecord, rewrapped: dict[int, bytes] | None = None) -> None:
        """Record a (new) KEK and, in the same transaction, the data keys re-wrapped under it."""
        with self._sessions.begin() as session:
            row = session.get(StoreKekRow, 1)
            if row is None:
                row = StoreKekRow(id=1, fingerprint=record.fingerprint, mode=record.mode)
                session.add(row)
            row.fingerprint, row.mode, row.scrypt_salt = record.fingerprint, record.mode, record.scrypt_salt
            row.scrypt_n = record.scrypt_n
            row.changed_at = utc_now()
            for model_id, wrapped in (rewrapped or {}).items():
                key_row = session.get(ModelKeyRow, model_id)
                if key_row is not None:
                    key_row.wrapped_key, key_row.kek_fingerprint = wrapped, record.fingerprint

    def add(self, key: ModelKey) -> None:
        """Record an encrypted model's wrapped key."""
        with self._sessions.begin() as session:
            session.add(
                ModelKeyRow(
                    model_id=key.model_id,
                    file_id=key.file_id,
                    wrapped_key=key.wrapped_key,
                    kek_fingerprint=key.kek_fingerprint,
                    stored_bytes=key.stored_bytes,
                )
            )

    def get(self, model_id: int) -> ModelKey | None:
        """The key record of a model, or None for a plain (unencrypted) model."""
        with self._sessions() as session:
            row = session.get(ModelKeyRow, model_id)
            return None if row is None else _key(row)

    def current_file(self, model_id: int) -> tuple[ModelKey, Path] | None:
        """A model's key record and its file's path, read in one statement (so they belong together: a
        re-encryption changes both in one transaction); None for a plain model."""
        with self._sessions() as session:
            found = session.execute(
                select(ModelKeyRow, ModelRow.path)
                .join(ModelRow, ModelRow.id == ModelKeyRow.model_id)
                .where(ModelKeyRow.model_id == model_id)
            ).first()
            return None if found is None else (_key(found[0]), Path(found[1]))

    def all(self) -> list[ModelKey]:
        """Every encrypted model's key record."""
        with self._sessions() as session:
            return [_key(row) for row in session.scalars(select(ModelKeyRow).order_by(ModelKeyRow.model_id))]

    def replace_file(self, key: ModelKey, path: Path) -> None:
        """Point a model at its re-encrypted file and new wrapped key, in one transaction."""
        with self._sessions.begin() as session:
            key_row = session.get(ModelKeyRow, key.model_id)
            model_row = session.get(ModelRow, key.model_id)
            if key_row is None or model_row is None:
                raise LookupError(f"model #{key.model_id} is not in the encrypted store")
            key_row.file_id, key_row.wrapped_key = key.file_id, key.wrapped_key
            key_row.kek_fingerprint, key_row.stored_bytes = key.kek_fingerprint, key.stored_bytes
            model_row.path = str(path)

    def remove_model(self, model_id: int) -> None:
        """Delete a model and its key record from the registry in one transaction."""
        with self._sessions.begin() as session:
            session.execute(delete(ModelKeyRow).where(ModelKeyRow.model_id == model_id))
            session.execute(delete(ModelRow).where(ModelRow.id == model_id))

    def flush_journal(self) -> bool:
        """Checkpoint the write-ahead log into the database and truncate it, so key rows a rotation replaced
        do not stay in the journal; False when a reader kept the checkpoint from finishing (they go later)."""
        with self._sessions() as session:
            busy = session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).scalar()
            session.commit()
        return busy == 0
