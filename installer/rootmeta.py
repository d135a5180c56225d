"""Root metadata: the signed document that alone may change which keys sign bundles (TUF's root role).

A root document lists offline root keys with a threshold, the bundle signing keys, revoked key ids, a
version and an optional expiry. Its file is JSON, `{"signed": {...}, "signatures": [{key_id, sig}]}`;
every signature is Ed25519 over `ROOT_DOMAIN` + the canonical bytes of the parsed `signed` part (sorted
keys, no spaces, PEMs as `PublicKey.pem()` writes them), so what a signer signed is exactly what the
installer believes, and a root signature can never pass for a manifest signature. The rules that decide
whether a document may replace the trusted one are in `trust.py`; this module only reads and writes.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from installer.crypto import PublicKey, load_public_key
from installer.errors import BundleFormatError, LimitError
from installer.manifest import TIME_FORMAT, format_time, parse_json

ROOT_TYPE = "appliance-root"
ROOT_DOMAIN = b"appliance-root-v1\n"
MAX_ROOT_KEYS = 32  # per list: enough for any real quorum, and a bound on signature checks
MAX_SIGNATURES = 64
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_SIGNED_FIELDS = {"type", "version", "expires", "threshold", "root_keys", "signing_keys", "revoked"}


@dataclass(frozen=True)
class Root:
    """The content of one root version (what its signatures cover)."""

    version: int
    expires: int | None  # seconds since the epoch, UTC; None: never
    threshold: int
    root_keys: tuple[PublicKey, ...]
    signing_keys: tuple[PublicKey, ...]
    revoked: frozenset[str]

    def to_obj(self) -> dict[str, Any]:
        """The `signed` part of the document."""
        return {
            "type": ROOT_TYPE,
            "version": self.version,
            "expires": format_time(self.expires) if self.expires is not None else None,
            "threshold": self.threshold,
            "root_keys": [k.pem() for k in self.root_keys],
            "signing_keys": [k.pem() for k in self.signing_keys],
            "revoked": sorted(self.revoked),
        }

    def message(self) -> bytes:
        """The exact bytes every signature of this root version is over."""
        canonical = json.dumps(self.to_obj(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return ROOT_DOMAIN + canonical.encode("ascii")


@dataclass(frozen=True)
class SignedRoot:
    """A root version and the signatures carried with it (not yet checked by anyone)."""

    root: Root
    signatures: tuple[tuple[str, bytes], ...] = ()  # (key id, 64-byte signature), key ids unique

    def with_signature(self, key_id: str, signature: bytes) -> SignedRoot:
        """This document with one more signature (replacing an earlier one by the same key)."""
        kept = tuple(s for s in self.signatures if s[0] != key_id)
        return SignedRoot(self.root, (*kept, (key_id, signature)))

    def to_obj(self) -> dict[str, Any]:
        """The document as JSON-ready data (also the form kept in the install state)."""
        signatures = [
            {"key_id": kid, "sig": base64.b64encode(sig).decode("ascii")} for kid, sig in self.signatures
        ]
        return {"signed": self.root.to_obj(), "signatures": signatures}

    def to_bytes(self) -> bytes:
        """The document's file content."""
        return (json.dumps(self.to_obj(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BundleFormatError("root document has a duplicated JSON key")
    return dict(pairs)


def _fail(reason: str) -> BundleFormatError:
    return BundleFormatError(f"root document: {reason}")


def _int(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(f"'{name}' must be an integer >= {minimum}")
    return value


def _keys(value: object, name: str) -> tuple[PublicKey, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise _fail(f"'{name}' must be a list of PEM public keys")
    if not value or len(value) > MAX_ROOT_KEYS:
        raise _fail(f"'{name}' must list 1 to {MAX_ROOT_KEYS} keys")
    keys = tuple(load_public_key(k) for k in value)
    if len({k.key_id for k in keys}) != len(keys):
        raise _fail(f"'{name}' lists a key twice")
    return keys


def _expires(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail("'expires' must be null or a time like 2026-01-31T00:00:00Z")
    try:
        return calendar.timegm(time.strptime(value, TIME_FORMAT))
    except ValueError:
        raise _fail("'expires' is not a time like 2026-01-31T00:00:00Z") from None


def parse_root_obj(obj: object) -> SignedRoot:
    """Validate a root document's structure and its self-consistency (signatures are `trust.py`'s job).

    Self-consistency: 1 <= threshold <= number of root keys; at least one signing key (an empty list would
    lock every later bundle out); no key is both a root key and a signing key (root keys stay offline and
    never sign bundles); no listed key is among the document's own revocations.
    """
    if not isinstance(obj, dict) or set(obj) != {"signed", "signatures"}:
        raise _fail("needs exactly 'signed' and 'signatures'")
    signed, signatures = obj["signed"], obj["signatures"]
    if not isinstance(signed, dict) or set(signed) != _SIGNED_FIELDS:
        raise _fail(f"'signed' needs exactly {sorted(_SIGNED_FIELDS)}")
    if signed["type"] != ROOT_TYPE:
        raise _fail(f"'type' is {str(signed['type'])[:40]!r}, not {ROOT_TYPE!r}")
    root_keys = _keys(signed["root_keys"], "root_keys")
    signing_keys = _keys(signed["signing_keys"], "signing_keys")
    revoked = signed["revoked"]
    if not isinstance(revoked, list) or not all(isinstance(r, str) and _KEY_ID.fullmatch(r) for r in revoked):
        raise _fail("'revoked' must be a list of key ids (64 hex digits)")
    root = Root(
        version=_int(signed["version"], "version", 1),
        expires=_expires(signed["expires"]),
        threshold=_int(signed["threshold"], "threshold", 1),
        root_keys=root_keys,
        signing_keys=signing_keys,
        revoked=frozenset(revoked),
    )
    if root.threshold > len(root_keys):
        raise _fail(f"threshold {root.threshold} is more than its {len(root_keys)} root keys")
    if both := {k.key_id for k in root_keys} & {k.key_id for k in signing_keys}:
        raise _fail(f"key {min(both)[:16]} is both a root key and a signing key; keep root keys offline")
    if listed := {k.key_id for k in (*root_keys, *signing_keys)} & root.revoked:
        raise _fail(f"key {min(listed)[:16]} is listed and revoked at once")
    return SignedRoot(root, _signatures(signatures))


def _signatures(value: object) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, list) or len(value) > MAX_SIGNATURES:
        raise _fail(f"'signatures' must be a list of at most {MAX_SIGNATURES}")
    found: dict[str, bytes] = {}
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"key_id", "sig"}:
            raise _fail("each signature needs exactly 'key_id' and 'sig'")
        key_id, sig = entry["key_id"], entry["sig"]
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id) or not isinstance(sig, str):
            raise _fail("a signature's 'key_id' must be 64 hex digits and its 'sig' base64")
        if key_id in found:
            raise _fail(f"key {key_id[:16]} signs twice")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise _fail(f"the signature of key {key_id[:16]} is not base64") from None
        if len(raw) != 64:
            raise _fail(f"the signature of key {key_id[:16]} is {len(raw)} bytes; Ed25519 gives 64")
        found[key_id] = raw
    return tuple(found.items())


def parse_root_document(data: bytes, max_bytes: int) -> SignedRoot:
    """Parse a root document file (a bundle's `trust/root.json` or one an admin passes)."""
    if len(data) > max_bytes:
        raise LimitError(f"root document is {len(data)} bytes, more than the limit of {max_bytes}")
    return parse_root_obj(parse_json(data, "root document", object_pairs_hook=_no_duplicate_keys))


def is_public_key_pem(data: bytes) -> bool:
    """Whether a --trust file is a single public key (the simple, pinned case) rather than a root."""
    return data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----")
