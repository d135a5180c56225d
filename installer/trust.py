"""The set of trusted and revoked signing keys, and the trusted-keys file a bundle may carry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from installer.crypto import PublicKey, load_public_key
from installer.errors import BundleFormatError, LimitError
from installer.manifest import parse_json

_KEY_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TrustedKeys:
    """Keys a manifest may be signed by, and key ids that must never be accepted again."""

    keys: dict[str, PublicKey] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()
    version: int = 0  # the version of the trusted-keys file these came from (0: pinned by the admin)

    def usable(self, key_id: str) -> PublicKey | None:
        """The key with this id if it is trusted and not revoked."""
        return None if key_id in self.revoked else self.keys.get(key_id)

    def with_keys(self, added: list[PublicKey]) -> TrustedKeys:
        """These keys plus `added` (an admin pinning keys)."""
        return TrustedKeys({**self.keys, **{k.key_id: k for k in added}}, self.revoked, self.version)

    def with_revoked(self, key_id: str) -> TrustedKeys:
        """These keys with `key_id` revoked for good."""
        keys = {kid: k for kid, k in self.keys.items() if kid != key_id}
        return TrustedKeys(keys, self.revoked | {key_id}, self.version)

    def rotated(self, update: TrustUpdate) -> TrustedKeys:
        """Trust after a verified trusted-keys file: its keys replace ours, revocations add up."""
        revoked = self.revoked | update.revoked
        keys = {k.key_id: k for k in update.keys if k.key_id not in revoked}
        return TrustedKeys(keys, revoked, update.version)

    def to_json(self) -> dict[str, Any]:
        """The form kept in the install state."""
        return {
            "version": self.version,
            "keys": [k.pem() for k in self.keys.values()],
            "revoked": sorted(self.revoked),
        }

    @classmethod
    def from_json(cls, obj: object) -> TrustedKeys:
        """Read the install state's form back."""
        update = parse_trust_obj(obj)
        return cls({k.key_id: k for k in update.keys}, update.revoked, update.version)


@dataclass(frozen=True)
class TrustUpdate:
    """A trusted-keys file: the complete new key list, revocations, and its own increasing version."""

    version: int
    keys: tuple[PublicKey, ...]
    revoked: frozenset[str]


def parse_trust_obj(obj: object) -> TrustUpdate:
    """Validate the JSON form shared by trusted-keys files and the install state."""
    if not isinstance(obj, dict) or set(obj) != {"version", "keys", "revoked"}:
        raise BundleFormatError("a trusted-keys document needs exactly 'version', 'keys' and 'revoked'")
    version, keys, revoked = obj["version"], obj["keys"], obj["revoked"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BundleFormatError("a trusted-keys document's version must be an integer >= 0")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BundleFormatError("a trusted-keys document's 'keys' must be a list of PEM strings")
    if not isinstance(revoked, list) or not all(isinstance(r, str) and _KEY_ID.fullmatch(r) for r in revoked):
        raise BundleFormatError("a trusted-keys document's 'revoked' must be a list of key ids")
    return TrustUpdate(version, tuple(load_public_key(k) for k in keys), frozenset(revoked))


def parse_trust_file(data: bytes, max_bytes: int) -> TrustUpdate:
    """Parse a bundle's `trust/keys.json` (after its bytes were checked against the signed manifest)."""
    if len(data) > max_bytes:
        raise LimitError(f"trusted-keys file is more than {max_bytes} bytes")
    obj = parse_json(data, "trusted-keys file")
    update = parse_trust_obj(obj)
    if not update.keys:
        raise BundleFormatError("trusted-keys file lists no keys; it would lock every later bundle out")
    return update
