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

from appliance.atomic_files import atomic_write_text
from appliance.errors import ApplianceError, InvalidRequestError, StoreIntegrityError
from appliance.store.format import DATA_KEY_BYTES

KEY_FILE = "store.key"
KEK_BYTES = 32
SCRYPT_N = 2**17
"""scrypt cost of every new passphrase KEK: about 0.3-0.5 s and 128 MiB per derivation (the OWASP minimum
for scrypt with r=8, p=1). The registry records it beside the salt: raising it later locks no store out."""
LEGACY_SCRYPT_N = 2**15
"""The cost of stores made before the registry recorded it (NULL `scrypt_n`); the next rotation raises it."""
MAX_SCRYPT_N = 2**20
"""A damaged or hostile registry must not make an unlock allocate more than 1 GiB."""
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE_CHARS = 12
"""A new store passphrase is refused below this length: scrypt slows guessing, it cannot save a short one."""
PR_SET_DUMPABLE = 4


class WeakPassphraseError(InvalidRequestError):
    """A new store passphrase that is too short; nothing is changed."""

    code = "weak_store_passphrase"


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


def check_new_passphrase(passphrase: str) -> None:
    """Refuse a new store passphrase shorter than MIN_PASSPHRASE_CHARS (an existing one still unlocks)."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise WeakPassphraseError(
            f"the new store passphrase is too short: at least {MIN_PASSPHRASE_CHARS} characters",
            param="passphrase",
        )


def scrypt_cost(recorded: int | None) -> int:
    """The N a passphrase KEK was derived with, from the registry's record (None: LEGACY_SCRYPT_N)."""
    n = LEGACY_SCRYPT_N if recorded is None else recorded
    if not LEGACY_SCRYPT_N <= n <= MAX_SCRYPT_N or n & (n - 1):
        raise StoreIntegrityError(f"the registry records an invalid scrypt cost ({n}) for the store key")
    return n


def passphrase_kek(passphrase: str, salt: bytes, n: int = SCRYPT_N) -> Kek:
    """A KEK derived from an admin passphrase with scrypt at cost `n` (the record's, see scrypt_cost)."""
    if not passphrase:
        raise ApplianceError("the store passphrase must not be empty")
    kdf = Scrypt(salt=salt, length=KEK_BYTES, n=n, r=SCRYPT_R, p=SCRYPT_P)
    return Kek(kdf.derive(passphrase.encode()))
