"""The pure bundle verifier: bytes and trusted keys in, a verified manifest out, or an exception.

Modelled on python-tuf's `trusted_metadata_set`: no filesystem, no network, no clock of its own (the
caller passes `now`), so every rule can be tested with bytes alone. The tar reading is in `bundlefile`.
"""

from __future__ import annotations

import hashlib
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

    Invariants (each has a test in tests/installer):
    - the manifest is at most `limits.max_manifest_bytes` before it is parsed at all;
    - the signature is exactly 64 bytes and is checked over the exact bytes given, never a re-encoding;
    - the key the manifest names is refused if revoked, refused if not trusted, and used only if trusted;
    - nothing the manifest says (expiry, version, members) is believed before its signature verifies;
    - an expired manifest (`now` at or after `expires`) is refused;
    - the version must be higher than `installed_version` (the current one) and not lower than
      `highest_version` (the highest ever installed: after an admin's rollback only that version or a newer
      one may come back, never an older bundle), unless `allow_downgrade` is set by the admin;
    - member paths are relative, of safe components, unique, and each in its role's folder.
    """
    manifest = parse_manifest(manifest_data, limits)
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"manifest.sig is {len(signature)} bytes; an Ed25519 signature is 64")
    if manifest.key_id in trust.revoked:
        raise RevokedKeyError(f"manifest is signed by revoked key {manifest.key_id[:16]}")
    key = trust.usable(manifest.key_id)
    if key is None:
        raise UntrustedKeyError(f"manifest is signed by key {manifest.key_id[:16]}, which is not trusted")
    if not verifier.verify(key, signature, manifest_data):
        raise SignatureError(f"manifest signature does not verify with key {manifest.key_id[:16]}")
    if now >= manifest.expires:
        raise ExpiredError(f"manifest of version {manifest.version} expired at {manifest.expires}")
    if installed_version is not None and manifest.version <= installed_version and not allow_downgrade:
        raise DowngradeError(
            f"bundle version {manifest.version} is not higher than installed version {installed_version}"
        )
    if highest_version is not None and manifest.version < highest_version and not allow_downgrade:
        raise DowngradeError(
            f"bundle version {manifest.version} is older than version {highest_version}, installed before"
        )
    return manifest


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
