"""The encrypted model store: import, verify, export, remove, list, rotate the key, and open into a memfd.

Encrypted files live in `APPLIANCE_HOME/store/`; their wrapped data keys and the KEK's fingerprint live in the
registry. The KEK comes from `APPLIANCE_HOME/store.key` (mode 0600, created on first use) or, in passphrase
mode, from the admin's passphrase through scrypt.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import (
    ApplianceError,
    ConflictError,
    ModelFileError,
    ModelNotFoundError,
    StoreIntegrityError,
)
from appliance.gguf_info import read_gguf_info
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.registry.store_keys import KekRecord, ModelKey
from appliance.store.format import DEFAULT_CHUNK_SIZE, Progress, Reader, decrypt_chunks, encrypt_stream
from appliance.store.keys import (
    KEY_FILE,
    Kek,
    KeyFileError,
    make_non_dumpable,
    new_data_key,
    new_kek,
    passphrase_kek,
    read_key_file,
    unwrap_key,
    wrap_key,
    write_key_file,
)
from appliance.store.streams import ChunkReader, FdWriter, HashingReader

STORE_FOLDER = "store"
SUFFIX = ".aplm"
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
SALT_BYTES = 16


class StoreLockedError(ApplianceError):
    """The store is in passphrase mode and no passphrase was given: encrypted models cannot be opened."""

    status_code = 503
    code = "store_locked"
    retry_after_s = 30


class UnencryptedModelError(ApplianceError):
    """`[store] require_encrypted` is on and a model is not in the encrypted store."""

    code = "unencrypted_model"


@dataclass(frozen=True)
class StoredModel:
    """One registered model as the store lists it."""

    name: str
    aliases: tuple[str, ...]
    encrypted: bool
    plain_bytes: int
    stored_bytes: int
    path: Path


def _sync_write(path: Path, chunks: Iterator[bytes]) -> None:
    """Write chunks to a new file (mode 0600) and fsync it; the caller renames it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = FdWriter(fd)
        for chunk in chunks:
            writer.write(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """The encrypted store of one appliance home, over its registry."""

    def __init__(
        self,
        home: Path,
        registry: Registry,
        *,
        passphrase: str | None = None,
        kek: Kek | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._home = home
        self._registry = registry
        self._passphrase = passphrase
        self._unlocked = kek
        """A passphrase-mode KEK already derived (by an unlocked gateway), so no passphrase is kept."""
        self._chunk_size = chunk_size

    @property
    def folder(self) -> Path:
        """Where the encrypted files are."""
        return self._home / STORE_FOLDER

    @property
    def key_file(self) -> Path:
        """The key file of key-file mode."""
        return self._home / KEY_FILE

    # --- keys -------------------------------------------------------------------------------------------

    def _kek(self) -> Kek:
        """The current KEK, checked against the fingerprint the registry recorded."""
        make_non_dumpable()  # from here on this process holds key material
        record = self._registry.store_keys.kek()
        if record is not None and record.mode == "passphrase":
            if self._unlocked is not None and self._unlocked.fingerprint == record.fingerprint:
                return self._unlocked
            if self._passphrase is None or record.scrypt_salt is None:
                raise StoreLockedError("the model store is locked: it needs the admin passphrase")
            kek = passphrase_kek(self._passphrase, record.scrypt_salt)
            if kek.fingerprint != record.fingerprint:
                raise StoreIntegrityError("wrong store passphrase")
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
            # A rotation committed the re-wrapped keys but stopped before installing the new key file.
            os.replace(pending, self.key_file)
            return read_key_file(self.key_file)
        raise StoreIntegrityError(f"{self.key_file} is not the key of this store (wrong key file)")

    def _key_record(self, model: ModelInfo) -> ModelKey:
        key = self._registry.store_keys.get(model.id)
        if key is None:
            raise ModelFileError(f"model {model.name!r} is not in the encrypted store", param="name")
        return key

    def _data_key(self, model: ModelInfo) -> bytes:
        return unwrap_key(self._kek(), self._key_record(model).wrapped_key, what=f"model {model.name!r}")

    def rotate_key(self, new_passphrase: str | None = None) -> int:
        """Re-wrap every data key under a new KEK (a new key file, or a passphrase); returns how many."""
        old = self._kek()
        keys = self._registry.store_keys.all()
        data_keys = {k.model_id: unwrap_key(old, k.wrapped_key, what=f"model #{k.model_id}") for k in keys}
        if new_passphrase is not None:
            salt = secrets.token_bytes(SALT_BYTES)
            new = passphrase_kek(new_passphrase, salt)
            record = KekRecord(new.fingerprint, "passphrase", salt)
            rewrapped = {model_id: wrap_key(new, key) for model_id, key in data_keys.items()}
            self._registry.store_keys.set_kek(record, rewrapped)
            self.key_file.unlink(missing_ok=True)
            self._passphrase = new_passphrase
            return len(rewrapped)
        new = new_kek()
        pending = self.key_file.with_name(KEY_FILE + ".new")
        write_key_file(pending, new)
        rewrapped = {model_id: wrap_key(new, key) for model_id, key in data_keys.items()}
        # Commit first, then install the key file: _kek() finishes a rotation interrupted in between.
        self._registry.store_keys.set_kek(KekRecord(new.fingerprint, "keyfile", None), rewrapped)
        os.replace(pending, self.key_file)
        return len(rewrapped)

    # --- operations -------------------------------------------------------------------------------------

    def _find(self, name: str) -> ModelInfo:
        for model in self._registry.models.list():
            if name in model.public_names:
                return model
        raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")

    def is_encrypted(self, model: ModelInfo) -> bool:
        """Whether the model's file is in the encrypted store."""
        return self._registry.store_keys.get(model.id) is not None

    def import_gguf(
        self, source: Path, *, name: str, aliases: tuple[str, ...] = (), progress: Progress | None = None
    ) -> ModelInfo:
        """Encrypt a GGUF file into the store and register it; a failed import leaves no file or row."""
        info = read_gguf_info(source)
        for existing in self._registry.models.list():
            taken = {name, *aliases} & set(existing.public_names)
            if taken:
                raise ConflictError(
                    f"name {sorted(taken)[0]!r} is already used by model {existing.name!r}", param="name"
                )
        kek = self._kek()
        data_key, file_id = new_data_key(), secrets.token_hex(16)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.folder / f"{file_id}{SUFFIX}"
        tmp = self.folder / f".{file_id}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        try:
            with source.open("rb") as plain:
                self._encrypt_into(tmp, HashingReader(plain, digest.update), data_key, file_id, progress)
            if digest.hexdigest() != info.sha256:
                raise ModelFileError(f"{source}: the file changed while it was being imported")
            os.replace(tmp, final)
            model = self._registry.models.add(final, info, name=name, aliases=aliases)
            try:
                wrapped = wrap_key(kek, data_key)
                stored = final.stat().st_size
                self._registry.store_keys.add(ModelKey(model.id, file_id, wrapped, kek.fingerprint, stored))
            except BaseException:
                self._registry.store_keys.remove_model(model.id)
                raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        return model

    def _plain_chunks(self, model: ModelInfo) -> Iterator[bytes]:
        """The verified plaintext of an encrypted model, chunk by chunk."""
        data_key = self._data_key(model)
        # The registry's path, not the caller's copy: a re-encryption may have moved the file since.
        current = next((m for m in self._registry.models.list() if m.id == model.id), model)
        with current.path.open("rb") as handle:
            yield from decrypt_chunks(handle, data_key)

    def verify(self, name: str, progress: Progress | None = None) -> ModelInfo:
        """Decrypt a model end to end (authenticating every chunk) and check its SHA-256; raise if not."""
        model = self._find(name)
        digest, done = hashlib.sha256(), 0
        try:
            for chunk in self._plain_chunks(model):
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done)
        except FileNotFoundError as error:
            raise StoreIntegrityError(f"{model.path}: the encrypted file of {name!r} is missing") from error
        if done != model.size_bytes or digest.hexdigest() != model.sha256:
            raise StoreIntegrityError(f"model {name!r} decrypts, but not to the file that was imported")
        return model

    def reencrypt(
        self, name: str, progress: Progress | None = None, verify_progress: Progress | None = None
    ) -> ModelInfo:
        """Re-encrypt a model under a new data key; the old file goes only once the new one verifies."""
        model = self._find(name)
        self._key_record(model)  # a plain model has nothing to re-encrypt: ModelFileError
        kek = self._kek()
        data_key, file_id = new_data_key(), secrets.token_hex(16)
        final = self.folder / f"{file_id}{SUFFIX}"
        tmp = self.folder / f".{file_id}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        try:
            # Streamed: one chunk of plaintext in memory at a time, never on disk.
            reader = ChunkReader(self._plain_chunks(model), digest.update)
            self._encrypt_into(tmp, reader, data_key, file_id, progress)
            if digest.hexdigest() != model.sha256:
                raise StoreIntegrityError(f"model {name!r} decrypts, but not to the file that was imported")
            self._check_file(tmp, data_key, model, verify_progress)
            os.replace(tmp, final)
            key = ModelKey(model.id, file_id, wrap_key(kek, data_key), kek.fingerprint, final.stat().st_size)
            self._registry.store_keys.replace_file(key, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        # Only now, with the registry pointing at the new file, is the old one (and its key) gone.
        if model.path != final:
            model.path.unlink(missing_ok=True)
        return self._find(name)

    def _encrypt_into(
        self, tmp: Path, reader: Reader, data_key: bytes, file_id: str, progress: Progress | None
    ) -> None:
        """Encrypt `reader` into the new file `tmp` (mode 0600, fsynced); the caller renames or removes it."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            encrypt_stream(
                reader, FdWriter(fd), data_key, file_id, chunk_size=self._chunk_size, progress=progress
            )
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_file(self, path: Path, data_key: bytes, model: ModelInfo, progress: Progress | None) -> None:
        """Decrypt `path` end to end under `data_key` and compare with the model's size and SHA-256."""
        digest, done = hashlib.sha256(), 0
        with path.open("rb") as handle:
            for chunk in decrypt_chunks(handle, data_key):
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done)
        if done != model.size_bytes or digest.hexdigest() != model.sha256:
            raise StoreIntegrityError(f"the re-encrypted file of {model.name!r} does not verify")

    def export(self, name: str, target: Path) -> Path:
        """Decrypt a model to `target` (a new file, mode 0600; into it if it is a folder), atomically."""
        model = self._find(name)
        if target.is_dir():
            target = target / f"{model.name}.gguf"
        if target.exists():
            raise ConflictError(f"{target} exists already; export does not overwrite", param="to")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            _sync_write(tmp, self._plain_chunks(model))
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def remove(self, name: str) -> ModelInfo:
        """Unregister a model; an encrypted one also loses its key and file (a plain file stays)."""
        model = self._find(name)
        encrypted = self.is_encrypted(model)
        self._registry.store_keys.remove_model(model.id)
        if encrypted:
            model.path.unlink(missing_ok=True)
        return model

    def list(self) -> list[StoredModel]:
        """Every registered model with its plaintext and stored sizes."""
        keys = {k.model_id: k for k in self._registry.store_keys.all()}
        listed = []
        for model in self._registry.models.list():
            key = keys.get(model.id)
            stored = key.stored_bytes if key is not None else model.size_bytes
            listed.append(
                StoredModel(model.name, model.aliases, key is not None, model.size_bytes, stored, model.path)
            )
        return listed

    def require_encrypted(self, models: builtins.list[ModelInfo]) -> None:
        """Raise UnencryptedModelError naming the first model that is not in the encrypted store."""
        for model in models:
            if not self.is_encrypted(model):
                raise UnencryptedModelError(
                    f"[store] require_encrypted is on and model {model.name!r} is not encrypted "
                    f"(import it with `appliance models import`)"
                )

    def decrypt_to_memfd(self, model: ModelInfo) -> int:
        """Decrypt a model into a sealed memfd; returns the descriptor (close-on-exec, caller closes)."""
        fd = os.memfd_create(f"model-{model.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            writer, done = FdWriter(fd), 0
            for chunk in self._plain_chunks(model):
                done += writer.write(chunk)
            if done != model.size_bytes:
                raise StoreIntegrityError(f"model {model.name!r} decrypts to the wrong size")
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
        return fd
