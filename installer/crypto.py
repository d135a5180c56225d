"""Ed25519 verification with code the host already trusts: `cryptography` if importable, else `openssl`.

Nothing from a bundle is imported or run to verify it, so the installer needs one of these two on the
host. Public keys are SubjectPublicKeyInfo PEM; a key's id is the sha256 of its raw 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from installer.errors import BundleFormatError, CryptoUnavailableError

# The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
# BIT STRING of 32 bytes }. Every Ed25519 public key in SPKI form is these 12 bytes then the raw key.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"
# `openssl` is looked up in system folders only, so a PATH entry cannot swap in another verifier.
_OPENSSL_PATH = "/usr/bin:/bin:/usr/local/bin"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with its id."""

    raw: bytes

    @property
    def key_id(self) -> str:
        """The sha256 of the raw key, in hex: what manifests and the install state name keys by."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def fingerprint(self) -> str:
        """The key id in groups of four, for an admin to compare by eye."""
        kid = self.key_id
        return " ".join(kid[i : i + 4] for i in range(0, len(kid), 4))

    def pem(self) -> str:
        """The key as SubjectPublicKeyInfo PEM."""
        body = base64.b64encode(_SPKI_PREFIX + self.raw).decode("ascii")
        return f"{_PEM_BEGIN}\n{body}\n{_PEM_END}\n"


def load_public_key(text: str) -> PublicKey:
    """Parse an Ed25519 SubjectPublicKeyInfo PEM with the standard library only."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _PEM_BEGIN or lines[-1] != _PEM_END:
        raise BundleFormatError("a public key is not a PEM 'PUBLIC KEY' block")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise BundleFormatError("a public key's PEM body is not base64") from None
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        raise BundleFormatError("a public key is not an Ed25519 key")
    return PublicKey(der[len(_SPKI_PREFIX) :])


class Verifier(Protocol):
    """Checks one Ed25519 signature; returns False (never raises) when it does not verify."""

    name: str

    def verify(self, key: PublicKey, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is `key`'s signature over `message`."""
        ...


class CryptographyVerifier:
    """Verification through the host's `cryptography` package."""

    name = "cryptography"

    def verify(self, key: PublicKey, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is `key`'s signature over `message`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class OpensslVerifier:
    """Verification through the host's `openssl` (3.x: `pkeyutl -verify -rawin`)."""

    name = "openssl"

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def verify(self, key: PublicKey, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is `key`'s signature over `message`."""
        # A private folder that is removed on every path out, so nothing is left behind.
        with tempfile.TemporaryDirectory(prefix="appliance-verify-") as folder:
            work = Path(folder)
            (work / "key.pem").write_text(key.pem())
            (work / "message").write_bytes(message)
            (work / "signature").write_bytes(signature)
            argv = [self.executable, "pkeyutl", "-verify", "-pubin", "-inkey", str(work / "key.pem")]
            argv += ["-rawin", "-in", str(work / "message"), "-sigfile", str(work / "signature")]
            done = subprocess.run(
                argv,
                capture_output=True,
                check=False,
                timeout=60,
            )
        return done.returncode == 0 and b"Verified Successfully" in done.stdout


def find_openssl() -> OpensslVerifier | None:
    """The system's openssl if it is version 3 or newer (1.1 has no -rawin for Ed25519)."""
    executable = shutil.which("openssl", path=_OPENSSL_PATH)
    if executable is None:
        return None
    done = subprocess.run([executable, "version"], capture_output=True, text=True, check=False, timeout=30)
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) < 2 or parts[0] != "OpenSSL":
        return None
    major = parts[1].split(".")[0]
    return OpensslVerifier(executable) if major.isdigit() and int(major) >= 3 else None


def default_verifier() -> Verifier:
    """`cryptography` when the host has it, else openssl 3, else a clear error."""
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401  (only probing)
    except ImportError:
        found = find_openssl()
        if found is None:
            raise CryptoUnavailableError(
                "no Ed25519 verifier on this host: install python3-cryptography or openssl 3"
            ) from None
        return found
    return CryptographyVerifier()
