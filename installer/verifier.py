"""The pure bundle verifier: bytes and trusted keys in, a verified manifest out, or an exception.

Modelled on python-tuf's `trusted_metadata_set`: no filesystem, no network, no clock of its own (the
caller passes `now`), so every rule can be tested with bytes alone. The tar reading is in `bundlefile`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from installer.crypto import Verifier
from installer.errors import (
    DowngradeError,
    ExpiredError,
    LimitError,
    MemberError,
    RevokedKeyError,
    SignatureError,
    UnsafeMemberError,
    UntrustedKeyError,
)
from installer.limits import Limits
from installer.manifest import SIGNATURE_BYTES, Manifest, Member, check_member_path, parse_manifest
from installer.trust import TrustedKeys

# ustar type flags: only regular files are bundle members; everything else is named in the refusal.
_REGULAR = {b"0", b"\0"}
_TYPE_NAMES = {
    b"1": "a hardlink",
    b"2": "a symlink",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a GNU sparse file",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long name",
    b"K": "a GNU long link name",
}


def verify_manifest(
    manifest_data: bytes,
    signature: bytes,
    trust: TrustedKeys,
    *,
    now: int,
    installed_version: int | None,
    allow_downgrade: bool,
    verifier: Verifier,
    limits: Limits,
    highest_version: int | None = None,
) -> Manifest:
    """Verify a manifest and return it; raise an InstallerError subclass on the first broken rule.

    Invariants (each has a test in tests/installer or tests/security):
    - the manifest is at most `limits.max_manifest_bytes` before anything else looks at it;
    - the signature is exactly 64 bytes and is checked over the exact bytes given, never a re-encoding,
      and before the manifest is parsed: a hostile manifest (deeply nested, huge numbers) reaches the
      JSON parser only if a trusted key signed it;
    - the key the manifest names is refused if revoked, refused if not trusted, and must be the very key
      whose signature verified;
    - nothing the manifest says (expiry, version, members) is believed before its signature verifies;
    - an expired manifest (`now` at or after `expires`) is refused;
    - the version must be higher than `installed_version` (the current one) and not lower than
      `highest_version` (the highest ever installed: after an admin's rollback only that version or a newer
      one may come back, never an older bundle), unless `allow_downgrade` is set by the admin;
    - member paths are relative, of safe components, unique, and each in its role's folder.
    """
    if len(manifest_data) > limits.max_manifest_bytes:
        raise LimitError(
            f"manifest is {len(manifest_data)} bytes, more than the limit of {limits.max_manifest_bytes}"
        )
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"manifest.sig is {len(signature)} bytes; an Ed25519 signature is 64")
    signer = _signing_key(manifest_data, signature, trust, verifier)
    manifest = parse_manifest(manifest_data, limits)  # signed bytes only from here on
    if manifest.key_id != signer:
        raise SignatureError(f"manifest names key {manifest.key_id[:16]} but is signed by key {signer[:16]}")
    if now >= manifest.expires:
        raise ExpiredError(f"manifest of version {manifest.version} expired at {manifest.expires}")
    if installed_version is not None and manifest.version <= installed_version and not allow_downgrade:
        raise DowngradeError(
            f"bundle version {manifest.version} is not higher than installed version {installed_version}"
            " (--allow-downgrade installs it anyway, audited)"
        )
    if highest_version is not None and manifest.version < highest_version and not allow_downgrade:
        raise DowngradeError(
            f"bundle version {manifest.version} is older than version {highest_version}, installed before"
            " (--allow-downgrade installs it anyway, audited)"
        )
    return manifest


# Only to word a refusal and to try the likely key first: a flat scan of the raw bytes, never a parse.
_KEY_ID_HINT = re.compile(rb'"key_id"\s*:\s*"([0-9a-f]{64})"')


def _signing_key(data: bytes, signature: bytes, trust: TrustedKeys, verifier: Verifier) -> str:
    """The id of the usable key whose signature over `data` verifies, or the refusal that fits."""
    found = _KEY_ID_HINT.search(data)
    hint = found.group(1).decode("ascii") if found else None
    usable = {kid: key for kid in sorted(trust.keys) if (key := trust.usable(kid)) is not None}
    for key_id in sorted(usable, key=lambda kid: kid != hint):  # the named key first: usually one check
        if verifier.verify(usable[key_id], signature, data):
            return key_id
    if hint is not None and hint in trust.revoked:
        raise RevokedKeyError(f"manifest is signed by revoked key {hint[:16]}")
    if hint is not None and hint not in trust.keys:
        raise UntrustedKeyError(f"manifest is signed by key {hint[:16]}, which is not trusted")
    named = f" with key {hint[:16]}" if hint is not None else " with any trusted key"
    raise SignatureError(f"manifest signature does not verify{named}")


@dataclass
class MemberTracker:
    """Checks tar members one by one against a verified manifest, then that none is missing.

    Invariants: a member is admitted only if it is a regular file, at a safe path, listed in the manifest,
    seen for the first time, and exactly the declared size (so reading it reads no more than declared);
    its sha256 must then match; at the end every listed member must have been seen.
    """

    manifest: Manifest
    limits: Limits
    seen: set[str] = field(default_factory=set)

    def admit(self, path: str, typeflag: bytes, size: int) -> Member:
        """The manifest entry for a tar header, or a refusal naming what is wrong with it."""
        kind = _TYPE_NAMES.get(typeflag)
        if typeflag not in _REGULAR:
            raise UnsafeMemberError(f"member {path!r} is {kind or f'of tar type {typeflag!r}'}")
        check_member_path(path, self.limits)
        member = self.manifest.member(path)
        if member is None:
            raise MemberError(f"member {path!r} is not in the manifest")
        if path in self.seen:
            raise MemberError(f"member {path!r} appears twice")
        if size > member.size:
            raise MemberError(f"member {path!r} is {size} bytes, longer than the {member.size} declared")
        if size < member.size:
            raise MemberError(f"member {path!r} is {size} bytes, shorter than the {member.size} declared")
        if len(self.seen) >= self.limits.max_members:
            raise LimitError(f"bundle has more than {self.limits.max_members} members")
        self.seen.add(path)
        return member

    def check_digest(self, member: Member, digest: hashlib._Hash) -> None:
        """Refuse a member whose content does not hash to the manifest's sha256."""
        if digest.hexdigest() != member.sha256:
            raise MemberError(
                f"member {member.path!r} has sha256 {digest.hexdigest()[:16]}…, not the signed one"
            )

    def finish(self) -> None:
        """Refuse a bundle that lacks a member its manifest lists."""
        missing = sorted(m.path for m in self.manifest.members if m.path not in self.seen)
        if missing:
            raise MemberError(f"member {missing[0]!r} is in the manifest but not in the bundle")
