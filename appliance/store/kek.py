"""The store's key-encryption key: from the key file or the admin's passphrase, checked, and rotated."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from appliance.errors import ModelFileError, StoreIntegrityError
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.registry.store_keys import KekRecord, ModelKey
from appliance.store.keys import (
    KEY_FILE,
    SCRYPT_N,
    Kek,
    KeyFileError,
    check_new_passphrase,
    make_non_dumpable,
    new_kek,
    passphrase_kek,
    read_key_file,
    scrypt_cost,
    unwrap_key,
    wrap_key,
    write_key_file,
)
from appliance.store.locked import StoreLockedError

SALT_BYTES = 16


class StoreKek:
    """Where one home's KEK comes from, and the data keys it unwraps."""

    def __init__(
        self, home: Path, registry: Registry, *, passphrase: str | None = None, unlocked: Kek | None = None
    ) -> None:
        self._home = home
        self._registry = registry
        self._passphrase = passphrase
        self._unlocked = unlocked
        """A passphrase-mode KEK already derived (by an unlocked gateway), so no passphrase is kept."""

    @property
    def key_file(self) -> Path:
        """The key file of key-file mode."""
        return self._home / KEY_FILE

    def kek(self) -> Kek:
        """The current KEK, checked against the fingerprint the registry recorded."""
        make_non_dumpable()  # from here on this process holds key material
        record = self._registry.store_keys.kek()
        if record is not None and record.mode == "passphrase":
            if self._unlocked is not None and self._unlocked.fingerprint == record.fingerprint:
                return self._unlocked
            if self._passphrase is None or record.scrypt_salt is None:
                raise StoreLockedError("the model store is locked: it needs the admin passphrase")
            kek = passphrase_kek(self._passphrase, record.scrypt_salt, scrypt_cost(record.scrypt_n))
            if kek.fingerprint != record.fingerprint:
                raise StoreIntegrityError("wrong store passphrase")
            self._unlocked = kek  # one scrypt derivation per store object, not one per key it opens
            return kek
        if record is None:
            kek = read_key_file(self.key_file) if self.key_file.exists() else new_kek()
            if not self.key_file.exists():
                write_key_file(self.key_file, kek)
            self._registry.store_keys.set_kek(KekRecord(kek.fingerprint, "keyfile", None))
            return kek
        if not self.key_file.exists():
            raise KeyFileError(f"{self.key_file}: the store key file is missing")
        kek = read_key_file(self.key_file)
        if kek.fingerprint == record.fingerprint:
            return kek
        pending = self.key_file.with_name(KEY_FILE + ".new")
        if pending.exists() and read_key_file(pending).fingerprint == record.fingerprint:
            # A rotation committed the re-wrapped keys but has not installed the new key file (yet).
            _install(pending, self.key_file)
            return read_key_file(self.key_file)
        raise StoreIntegrityError(f"{self.key_file} is not the key of this store (wrong key file)")

    def key_record(self, model: ModelInfo) -> ModelKey:
        """The model's wrapped data key; ModelFileError for a model not in the store."""
        key = self._registry.store_keys.get(model.id)
        if key is None:
            raise ModelFileError(f"model {model.name!r} is not in the encrypted store", param="name")
        return key

    def data_key(self, model: ModelInfo) -> bytes:
        """The model's data key, unwrapped with the current KEK."""
        return unwrap_key(self.kek(), self.key_record(model).wrapped_key, what=f"model {model.name!r}")

    def rotate(self, new_passphrase: str | None = None) -> int:
        """Re-wrap every data key under a new KEK (a new key file, or a passphrase); returns how many.
        (ModelStore.rotate_key then gives every model a new data key.)

        A new passphrase is derived at today's SCRYPT_N, so a store made at a lower cost is upgraded here."""
        if new_passphrase is not None:
            check_new_passphrase(new_passphrase)  # before anything is read or written
        old = self.kek()
        keys = self._registry.store_keys.all()
        data_keys = {k.model_id: unwrap_key(old, k.wrapped_key, what=f"model #{k.model_id}") for k in keys}
        if new_passphrase is not None:
            salt = secrets.token_bytes(SALT_BYTES)
            new = passphrase_kek(new_passphrase, salt, SCRYPT_N)
            record = KekRecord(new.fingerprint, "passphrase", salt, SCRYPT_N)
            rewrapped = {model_id: wrap_key(new, key) for model_id, key in data_keys.items()}
            self._registry.store_keys.set_kek(record, rewrapped)
            self.key_file.unlink(missing_ok=True)
            self._passphrase, self._unlocked = None, new
            return len(rewrapped)
        new = new_kek()
        pending = self.key_file.with_name(KEY_FILE + ".new")
        write_key_file(pending, new)
        rewrapped = {model_id: wrap_key(new, key) for model_id, key in data_keys.items()}
        # Commit first, then install the key file: _kek() finishes a rotation interrupted in between.
        self._registry.store_keys.set_kek(KekRecord(new.fingerprint, "keyfile", None), rewrapped)
        _install(pending, self.key_file)
        return len(rewrapped)


def _install(pending: Path, key_file: Path) -> None:
    """Put a committed rotation's new key file in place; a reader that got there first already did."""
    try:
        os.replace(pending, key_file)
    except FileNotFoundError:
        if not key_file.exists():
            raise
