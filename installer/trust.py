"""What the prefix trusts: bundle signing keys, revocations, and the root that alone may change them.

Two modes. Pinned (the simple case, `--trust KEY.pub`): the admin's pinned keys sign bundles and each
also acts as a 1-of-1 root, so a pinned key can sign the root update that hands trust to real root keys.
Rooted (`--trust root.json`, or after the first root update): offline root keys with a threshold sign
every change to the trusted set, as TUF's root role does; signing keys only sign bundles.
A bundle's own signature never changes trust: only a root document that passes `verify_root_update`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from installer.crypto import PublicKey, Verifier, default_verifier, load_public_key
from installer.errors import (
    BundleFormatError,
    DowngradeError,
    ExpiredError,
    RevokedKeyError,
    SignatureError,
    UsageError,
)
from installer.limits import DEFAULT_LIMITS
from installer.rootmeta import SignedRoot, is_public_key_pem, parse_root_document, parse_root_obj

_KEY_ID = re.compile(r"[0-9a-f]{64}")
_STATE_FIELDS = {"version", "keys", "revoked"}


@dataclass(frozen=True)
class TrustedKeys:
    """Keys a manifest may be signed by, ids never accepted again, and the root that governs them."""

    keys: dict[str, PublicKey] = field(default_factory=dict)  # bundle signing keys
    revoked: frozenset[str] = frozenset()
    version: int = 0  # the root version (0: keys pinned by the admin, no root document yet)
    root: SignedRoot | None = None  # None: pinned mode

    @property
    def root_keys(self) -> dict[str, PublicKey]:
        """The keys whose signatures count towards a trust change (pinned mode: the pinned keys)."""
        if self.root is None:
            return dict(self.keys)
        return {k.key_id: k for k in self.root.root.root_keys if k.key_id not in self.revoked}

    @property
    def threshold(self) -> int:
        """How many of `root_keys` must sign a trust change."""
        return 1 if self.root is None else self.root.root.threshold

    def usable(self, key_id: str) -> PublicKey | None:
        """The key with this id if it is trusted and not revoked."""
        return None if key_id in self.revoked else self.keys.get(key_id)

    def with_keys(self, added: list[PublicKey]) -> TrustedKeys:
        """These keys plus `added` (an admin pinning keys; pinned mode only, the CLI enforces it)."""
        return TrustedKeys(
            {**self.keys, **{k.key_id: k for k in added}}, self.revoked, self.version, self.root
        )

    def with_revoked(self, key_id: str) -> TrustedKeys:
        """These keys with `key_id` revoked for good (narrowing trust needs no root signature)."""
        keys = {kid: k for kid, k in self.keys.items() if kid != key_id}
        return TrustedKeys(keys, self.revoked | {key_id}, self.version, self.root)

    def rotated(self, update: TrustUpdate) -> TrustedKeys:
        """Trust after a verified root update: its signing keys replace ours, revocations add up."""
        root = update.document.root
        revoked = self.revoked | root.revoked
        keys = {k.key_id: k for k in root.signing_keys if k.key_id not in revoked}
        return TrustedKeys(keys, revoked, root.version, update.document)

    def to_json(self) -> dict[str, Any]:
        """The form kept in the install state."""
        return {
            "version": self.version,
            "keys": [k.pem() for k in self.keys.values()],
            "revoked": sorted(self.revoked),
            "root": self.root.to_obj() if self.root is not None else None,
        }

    @classmethod
    def from_json(cls, obj: object) -> TrustedKeys:
        """Read the install state's form back (a state written before roots existed has no 'root')."""
        if not isinstance(obj, dict) or not _STATE_FIELDS <= set(obj) <= {*_STATE_FIELDS, "root"}:
            raise BundleFormatError("the trust state needs 'version', 'keys', 'revoked' and maybe 'root'")
        version, keys, revoked = obj["version"], obj["keys"], obj["revoked"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise BundleFormatError("the trust state's version must be an integer >= 0")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BundleFormatError("the trust state's 'keys' must be a list of PEM strings")
        if not isinstance(revoked, list) or not all(
            isinstance(r, str) and _KEY_ID.fullmatch(r) for r in revoked
        ):
            raise BundleFormatError("the trust state's 'revoked' must be a list of key ids")
        root = parse_root_obj(obj["root"]) if obj.get("root") is not None else None
        parsed = [load_public_key(k) for k in keys]
        return cls({k.key_id: k for k in parsed}, frozenset(revoked), version, root)


@dataclass(frozen=True)
class TrustUpdate:
    """A root document whose signatures passed `verify_root_update` against the trust it was checked with."""

    document: SignedRoot

    @property
    def version(self) -> int:
        """The root version it brings."""
        return self.document.root.version


def _valid_signers(document: SignedRoot, candidates: dict[str, PublicKey], verifier: Verifier) -> set[str]:
    """Ids of the candidate keys whose signature in `document` verifies over its canonical bytes."""
    message = document.root.message()
    return {
        kid
        for kid, sig in document.signatures
        if (key := candidates.get(kid)) is not None and verifier.verify(key, sig, message)
    }


def _check_new_root(
    document: SignedRoot, valid: set[str], known_root: set[str], known_signing: set[str], now: int
) -> None:
    """The rules every incoming root obeys: unexpired, its own threshold, every new key signed."""
    root = document.root
    if root.expires is not None and now >= root.expires:
        raise ExpiredError(f"root version {root.version} expired at {root.expires}")
    own = len(valid & {k.key_id for k in root.root_keys})
    if own < root.threshold:
        raise SignatureError(
            f"root version {root.version} is signed by {own} of its own root keys; its threshold is "
            f"{root.threshold}"
        )
    introduced = [k for k in root.root_keys if k.key_id not in known_root]
    introduced += [k for k in root.signing_keys if k.key_id not in known_signing]
    for key in introduced:
        if key.key_id not in valid:
            raise SignatureError(
                f"root version {root.version} introduces key {key.key_id[:16]}, which did not sign it "
                "(a new key must sign the change that introduces it)"
            )


def verify_root_update(
    trust: TrustedKeys, document: SignedRoot, verifier: Verifier, *, now: int
) -> TrustUpdate:
    """Check a root document against the current trust; return it as a TrustUpdate or raise.

    Invariants (tests/security/test_trust_roots.py):
    - its version is exactly the current version + 1: no rollback, no replay, no skipped version;
    - a threshold of the *current* root keys signed it (pinned mode: one pinned key), so a signing key,
      which is never a root key once a root document exists, cannot change the trusted set;
    - a threshold of its *own* root keys signed it, so a new root can sign the next update;
    - every key it introduces (a root key not a current root key, a signing key not a current signing
      key) signed it: proof of possession, no key is trusted on someone else's word;
    - no key it lists was ever revoked here, and it is not expired at `now`.
    Signatures are over `Root.message()`; one by a key that is not listed anywhere counts for nothing.
    """
    root = document.root
    if root.version <= trust.version:
        raise DowngradeError(
            f"root version {root.version} is not newer than the trusted version {trust.version} "
            "(an old or replayed trust update)"
        )
    if root.version != trust.version + 1:
        raise DowngradeError(
            f"root version {root.version} skips version {trust.version + 1}: apply root versions in order"
        )
    revoked = trust.revoked | root.revoked
    if listed := {k.key_id for k in (*root.root_keys, *root.signing_keys)} & trust.revoked:
        raise RevokedKeyError(f"root version {root.version} lists key {min(listed)[:16]}, which is revoked")
    current = trust.root_keys
    new_keys = {k.key_id: k for k in (*root.root_keys, *root.signing_keys) if k.key_id not in revoked}
    valid = _valid_signers(document, {**new_keys, **current}, verifier)
    by_current = len(valid & set(current))
    if by_current < trust.threshold:
        raise SignatureError(
            f"root version {root.version} is signed by {by_current} of the current root keys; the current "
            f"root (version {trust.version}) needs {trust.threshold}"
        )
    _check_new_root(document, valid, set(current), set(trust.keys), now)
    return TrustUpdate(document)


def bootstrap_root(document: SignedRoot, verifier: Verifier, *, now: int) -> TrustedKeys:
    """A first install's trust from a root document the admin pins (its fingerprints compared by eye)."""
    keys = {k.key_id: k for k in (*document.root.root_keys, *document.root.signing_keys)}
    _check_new_root(document, _valid_signers(document, keys, verifier), set(), set(), now)
    return TrustedKeys().rotated(TrustUpdate(document))


def pin_trust_files(
    paths: Sequence[Path], verifier: Verifier | None = None, now: int | None = None
) -> TrustedKeys:
    """A first install's trust from `--trust` files: public keys (pinned mode) or one root document."""
    try:
        contents = [path.read_bytes() for path in paths]
    except OSError as error:
        raise UsageError(f"cannot read a --trust file: {error.strerror}: {error.filename}") from None
    pems = [data for data in contents if is_public_key_pem(data)]
    if len(pems) == len(contents):
        return TrustedKeys().with_keys([load_public_key(data.decode("ascii", "replace")) for data in pems])
    if len(contents) != 1:
        raise UsageError("--trust takes either public keys or one root document, not both or two roots")
    if contents[0].lstrip().startswith(b"-----BEGIN"):
        raise UsageError(f"--trust {paths[0]} is a PEM block but not a public key (never pass a private key)")
    document = parse_root_document(contents[0], DEFAULT_LIMITS.max_trust_file_bytes)
    checker = verifier if verifier is not None else default_verifier()
    return bootstrap_root(document, checker, now=int(time.time()) if now is None else now)


def root_update_from_bundle(
    trust: TrustedKeys, data: bytes, verifier: Verifier, *, now: int, max_bytes: int
) -> TrustUpdate | None:
    """A bundle's `trust/root.json`: None if this prefix already has that version or a newer one.

    A bundle goes to many appliances, so a root version already applied here is not an error. Any other
    failure refuses the whole bundle: its signed content holds a trust change that does not hold up.
    """
    document = parse_root_document(data, max_bytes)
    if document.root.version <= trust.version:
        return None
    return verify_root_update(trust, document, verifier, now=now)
