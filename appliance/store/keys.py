"""Key-encryption keys (KEKs) and per-model data keys: key file or passphrase, AES key wrap, no dumps."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from appliance.errors import ApplianceError, StoreIntegrityError
from appliance.settings import atomic_write_text
from appliance.store.format import DATA_KEY_BYTES

KEY_FILE = "store.key"
KEK_BYTES = 32
SCRYPT_N = 2**15
"""scrypt cost: about 0.1 s and 32 MiB per unlock, which is what an interactive passphrase can afford."""
SCRYPT_R = 8
SCRYPT_P = 1
PR_SET_DUMPABLE = 4


class KeyFileError(ApplianceError):
    """The key file is unreadable, malformed, or readable by other users."""

    code = "store_key_file"


@dataclass(frozen=True)
class Kek:
    """A key-encryption key and its public fingerprint (which the registry keeps to detect a wrong key)."""

    key: bytes

    @property
    def fingerprint(self) -> str:
        """A short id derived from the key that reveals nothing about it."""
        return hmac.new(self.key, b"appliance-kek-id", hashlib.sha256).hexdigest()[:16]


def make_non_dumpable() -> None:
    """Forbid core dumps and ptrace by other processes of this user: this process holds keys or plaintext."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def wrap_key(kek: Kek, data_key: bytes) -> bytes:
    """The data key wrapped with AES key wrap (RFC 3394) under the KEK."""
    return aes_key_wrap(kek.key, data_key)


def unwrap_key(kek: Kek, wrapped: bytes, *, what: str) -> bytes:
    """The data key, or StoreIntegrityError when this KEK did not wrap it (wrong key file or passphrase)."""
    try:
        return aes_key_unwrap(kek.key, wrapped)
    except InvalidUnwrap as error:
        raise StoreIntegrityError(
            f"the store key does not open the key of {what} (wrong key file or passphrase, or a damaged key)"
        ) from error


def read_key_file(path: Path) -> Kek:
    """Read a KEK from a key file (64 hex digits); refuse one that other users may read."""
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"{path}: cannot read the store key file ({error})") from error
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(f"{path}: the store key file must be readable by its owner only (chmod 600)")
    try:
        key = bytes.fromhex(text)
    except ValueError as error:
        raise KeyFileError(f"{path}: not a store key file (expected 64 hex digits)") from error
    if len(key) != KEK_BYTES:
        raise KeyFileError(f"{path}: not a store key file (expected 64 hex digits)")
    return Kek(key)


def write_key_file(path: Path, kek: Kek) -> None:
    """Write a key file with mode 0600 atomically (temp file in the same folder, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(path, kek.key.hex() + "\n", mode=0o600)


def new_kek() -> Kek:
    """A fresh random KEK."""
    return Kek(secrets.token_bytes(KEK_BYTES))


def passphrase_kek(passphrase: str, salt: bytes) -> Kek:
    """A KEK derived from an admin passphrase with scrypt."""
    if not passphrase:
        raise ApplianceError("the store passphrase must not be empty")
    kdf = Scrypt(salt=salt, length=KEK_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return Kek(kdf.derive(passphrase.encode()))
