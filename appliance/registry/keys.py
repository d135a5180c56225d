"""API keys: random, shown once, stored as a hash, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import AuthenticationError, InvalidRequestError, NotFoundError
from appliance.registry.changes import DataVersion, ReadCache
from appliance.registry.schema import ApiKeyRow, utc_now

KEY_PREFIX = "apl"
SECRET_BYTES = 32
LAST_USED_RESOLUTION = timedelta(seconds=60)
"""last_used is refreshed at most this often, so authentication is a read, not a write, per request."""


class Role(StrEnum):
    """What a key may do: users call the OpenAI routes, admins also the admin routes."""

    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True)
class KeyInfo:
    """What the appliance knows about a key, never its secret."""

    id: str
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    """A newly created key: `secret` is the full key string, available only at this moment."""

    info: KeyInfo
    secret: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(row.id, row.name, Role(row.role), row.created_at, row.last_used_at, row.revoked_at)


@dataclass(frozen=True)
class _Stored:
    """What authentication needs of a key's row."""

    secret_sha256: str
    info: KeyInfo


class KeyStore:
    """Creates, checks, lists and revokes API keys in the registry."""

    def __init__(self, sessions: sessionmaker[Session], changes: DataVersion | None = None) -> None:
        self._sessions = sessions
        self._cache: ReadCache[_Stored | None] | None = ReadCache(changes) if changes else None
        """Keys by id, read once per change of the database (a revocation is a change)."""

    def create(self, name: str, role: Role) -> CreatedKey:
        """Make a key `apl-<id>-<secret>` with 256 bits of secret; only its hash is stored."""
        if not name.strip():
            raise InvalidRequestError("a key needs a non-empty name", param="name")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        row = ApiKeyRow(id=key_id, name=name, role=role.value, secret_sha256=_digest(secret))
        with self._sessions.begin() as session:
            session.add(row)
        return CreatedKey(_info(row), f"{KEY_PREFIX}-{key_id}-{secret}")

    def authenticate(self, presented: str) -> KeyInfo:
        """Return the key's info if `presented` is a live key, else raise AuthenticationError."""
        prefix, _, rest = presented.partition("-")
        key_id, _, secret = rest.partition("-")
        stored = self._stored(key_id) if prefix == KEY_PREFIX and key_id else None
        # Compare against a dummy digest when the id is unknown, so the comparison itself takes the same
        # time; the secret (256 bits) is what is guessed, an id is no secret (`keys list` shows it).
        expected = stored.secret_sha256 if stored is not None else _digest("\0")
        if not hmac.compare_digest(expected, _digest(secret)) or stored is None:
            raise AuthenticationError("Incorrect API key provided.")
        info = stored.info
        if info.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.")
        now = utc_now()
        last = info.last_used_at
        if last is None or now - last.replace(tzinfo=now.tzinfo) > LAST_USED_RESOLUTION:
            with self._sessions.begin() as session:
                row = session.get(ApiKeyRow, key_id)
                if row is not None:
                    row.last_used_at = now
            info = replace(info, last_used_at=now)
        return info

    def _stored(self, key_id: str) -> _Stored | None:
        if self._cache is None:
            return self._load(key_id)
        stored = self._cache.get(key_id, lambda: self._load(key_id))
        if stored is None:
            self._cache.forget(key_id)  # unknown ids are not kept: anyone may send any number of them
        return stored

    def _load(self, key_id: str) -> _Stored | None:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            return None if row is None else _Stored(row.secret_sha256, _info(row))

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first, revoked ones included."""
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_info(row) for row in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Mark a key revoked; it fails authentication from the next request on."""
        with self._sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r}", param="id")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return _info(row)
