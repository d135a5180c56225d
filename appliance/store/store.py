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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.errors import (
    ApplianceError,
    ModelFileError,
    ModelNotFoundError,
    StoreIntegrityError,
)
from appliance.gguf_info import GgufInfo, read_gguf_info
from appliance.registry.awq import awq_folder_facts
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.registry.store_keys import ModelKey
from appliance.safe_files import folder_files, open_source_file
from appliance.store.exports import export_target, write_new_file, write_new_folder
from appliance.store.folders import (
    decrypt_folder,
    import_folder,
    read_manifest,
    reencrypt_folder,
    remove_tree,
    verify_folder,
)
from appliance.store.format import DEFAULT_CHUNK_SIZE, Progress, decrypt_chunks
from appliance.store.housekeeping import entry_bytes, no_writers, remove_entries, unreferenced, writing
from appliance.store.kek import StoreKek
from appliance.store.keys import Kek, check_new_passphrase, new_data_key, unwrap_key, wrap_key
from appliance.store.reencrypt import (
    SUFFIX,
    RotationIncompleteError,
    RotationStep,
    encrypt_into,
    reencrypt_file,
)
from appliance.store.streams import FdWriter, HashingReader
from appliance.store.tmpfs import folder_prefix

STORE_FOLDER = "store"
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
SALT_BYTES = 16
AWQ = "awq"
"""The registry format of an AWQ model folder (served by vLLM, loaded from a private tmpfs folder)."""


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
        import_folders: tuple[Path, ...] = (),
    ) -> None:
        self._home = home
        self._import_folders = import_folders
        """`[store] import_folders`: where imports may read from (empty: anywhere)."""
        self._registry = registry
        self._keys = StoreKek(home, registry, passphrase=passphrase, unlocked=kek)
        self._chunk_size = chunk_size

    @property
    def folder(self) -> Path:
        """Where the encrypted files are."""
        return self._home / STORE_FOLDER

    @property
    def key_file(self) -> Path:
        """The key file of key-file mode."""
        return self._keys.key_file

    # --- keys (appliance/store/kek.py) ------------------------------------------------------------------

    def _kek(self) -> Kek:
        return self._keys.kek()

    def _key_record(self, model: ModelInfo) -> ModelKey:
        return self._keys.key_record(model)

    def _data_key(self, model: ModelInfo) -> bytes:
        return self._keys.data_key(model)

    def rotate_key(self, new_passphrase: str | None = None, on_model: RotationStep | None = None) -> int:
        """A new KEK (a new key file, or a passphrase) and a new data key for every stored model version,
        each file re-encrypted, streamed; returns how many. Crash-safe in two steps (reencrypt.py)."""
        if new_passphrase is not None:
            check_new_passphrase(new_passphrase)  # before anything is read or written
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with no_writers(self.folder):  # no import may wrap its key under the KEK being replaced
            self._keys.rotate(new_passphrase)
            found = (self._registry.models.get(key.model_id) for key in self._registry.store_keys.all())
            models = [model for model in found if model is not None]
            done = 0
            try:
                for index, model in enumerate(models, start=1):
                    size = self.content_bytes(model)
                    self._reencrypt_locked(
                        model, on_model(index, len(models), model, size) if on_model else None
                    )
                    done = index
            except ApplianceError as error:
                raise RotationIncompleteError(
                    f"the store key was changed but only {done} of {len(models)} model(s) have new data keys "
                    f"({error.message}); every model opens with the new key: run the rotation again to finish"
                ) from error
        self._registry.store_keys.flush_journal()  # the replaced key rows leave the write-ahead log too
        return len(models)

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
        self,
        source: Path,
        *,
        name: str,
        aliases: tuple[str, ...] = (),
        progress: Progress | None = None,
        version: str | None = None,
    ) -> ModelInfo:
        """Encrypt a GGUF file into the store and register it; a failed import leaves no file or row.

        With `version`, it becomes a new version of the existing model `name` (`appliance models activate`).
        """
        # Names first: reading the header hashes the whole file, minutes for a large one.
        self._registry.models.check_names_free(name, aliases, new_version=version is not None)
        info = read_gguf_info(source, allowed=self._import_folders)
        kek = self._kek()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with writing(self.folder):
            return self._import_locked(source, info, name, aliases, kek, progress, version)

    def import_awq_folder(
        self,
        source: Path,
        *,
        name: str,
        aliases: tuple[str, ...] = (),
        progress: Progress | None = None,
        tool_parser: str | None = None,
    ) -> ModelInfo:
        """Encrypt every file of an AWQ model folder into the store and register it (format `awq`);
        `tool_parser` is vLLM's tool-call parser for it (None: the architecture's)."""
        self._registry.models.check_names_free(name, aliases)
        folder_files(source, allowed=self._import_folders)  # no link or special file, in an allowed folder
        awq_folder_facts(source, name, "")  # refuse a folder that is not an AWQ model before any work
        kek = self._kek()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_key, file_id = new_data_key(), secrets.token_hex(16)
        with writing(self.folder):
            chunk = self._chunk_size
            final, manifest = import_folder(
                self.folder, source, data_key, file_id, chunk, progress, self._import_folders
            )
            try:
                facts = awq_folder_facts(source, name, manifest.digest())
                model = self._registry.models.add_awq_folder(
                    final, facts, name=name, aliases=aliases, tool_parser=tool_parser
                )
                try:
                    stored = entry_bytes(final)
                    key = ModelKey(model.id, file_id, wrap_key(kek, data_key), kek.fingerprint, stored)
                    self._registry.store_keys.add(key)
                except BaseException:
                    self._registry.store_keys.remove_model(model.id)
                    raise
            except BaseException:
                remove_tree(final)
                raise
        return model

    def _import_locked(
        self,
        source: Path,
        info: GgufInfo,
        name: str,
        aliases: tuple[str, ...],
        kek: Kek,
        progress: Progress | None,
        version: str | None = None,
    ) -> ModelInfo:
        """import_gguf's writing part, under the writers' lock (so a clean-up never takes its temp file)."""
        data_key, file_id = new_data_key(), secrets.token_hex(16)
        final = self.folder / f"{file_id}{SUFFIX}"
        tmp = self.folder / f".{file_id}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        try:
            # Opened again by the same rules; the digest below catches a file changed in between.
            with open_source_file(source, allowed=self._import_folders) as plain:
                reader = HashingReader(plain, digest.update)
                encrypt_into(tmp, reader, data_key, file_id, self._chunk_size, progress)
            if digest.hexdigest() != info.sha256:
                raise ModelFileError(f"{source}: the file changed while it was being imported")
            os.replace(tmp, final)
            model = self._registry.models.add(final, info, name=name, aliases=aliases, version=version)
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

    def _current(self, model: ModelInfo) -> tuple[ModelKey, Path]:
        """The model's key record and file as the registry has them now, not as the caller's copy says: a
        re-encryption or rotation changes both in one transaction, so they are read in one statement."""
        found = self._registry.store_keys.current_file(model.id)
        if found is None:
            raise ModelFileError(f"model {model.name!r} is not in the encrypted store", param="name")
        return found

    def _open(self, model: ModelInfo, key: ModelKey, path: Path) -> tuple[bytes, BinaryIO]:
        return unwrap_key(self._kek(), key.wrapped_key, what=f"model {model.name!r}"), path.open("rb")

    def _plain_chunks(self, model: ModelInfo) -> Iterator[bytes]:
        """The verified plaintext of an encrypted model, chunk by chunk."""
        found = self._current(model)
        try:
            data_key, handle = self._open(model, *found)
        except (StoreIntegrityError, FileNotFoundError):
            if self._current(model) == found:
                raise
            # A re-encryption or rotation committed (and removed the old file) in between: what it wrote.
            data_key, handle = self._open(model, *self._current(model))
        with handle:  # once open, a file that a re-encryption removes still reads to its end
            yield from decrypt_chunks(handle, data_key)

    def verify(self, name: str, progress: Progress | None = None) -> ModelInfo:
        """Decrypt a model end to end (authenticating every chunk) and check its SHA-256; raise if not."""
        model = self._find(name)
        if model.format == AWQ:
            if verify_folder(model.path, self._data_key(model), progress).digest() != model.sha256:
                raise StoreIntegrityError(f"model {name!r}'s manifest is not the one that was imported")
            return model
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

    def content_bytes(self, model: ModelInfo) -> int:
        """The plaintext bytes a verify or an export goes through (an AWQ folder's: all its files)."""
        if model.format == AWQ and self.is_encrypted(model):
            return sum(entry.size for entry in read_manifest(model.path, self._data_key(model)).files)
        return model.size_bytes

    def reencrypt(
        self, name: str, progress: Progress | None = None, verify_progress: Progress | None = None
    ) -> ModelInfo:
        """Re-encrypt a model (a GGUF file or an AWQ folder) under a new data key; the old file goes only
        once the new one verifies."""
        model = self._find(name)
        self._key_record(model)  # a plain model has nothing to re-encrypt: ModelFileError
        with writing(self.folder):
            self._reencrypt_locked(model, progress, verify_progress)
        return self._find(name)

    def _reencrypt_locked(
        self, model: ModelInfo, progress: Progress | None, verify_progress: Progress | None = None
    ) -> None:
        """Re-encrypt one model version (as the registry has it now) under a writers' lock."""
        kek, old_key = self._kek(), self._data_key(model)
        data_key, file_id = new_data_key(), secrets.token_hex(16)
        chunk = self._chunk_size
        if model.format == AWQ:
            final = reencrypt_folder(self.folder, model.path, old_key, data_key, file_id, chunk, progress)
        else:
            try:
                handle = model.path.open("rb")
            except FileNotFoundError as error:
                raise StoreIntegrityError(
                    f"{model.path}: the encrypted file of {model.name!r} is missing"
                ) from error
            with handle:  # streamed: one chunk of plaintext in memory at a time, never on disk
                plain = decrypt_chunks(handle, old_key)
                final = reencrypt_file(
                    self.folder, model, plain, data_key, file_id, chunk, progress, verify_progress
                )
        # A commit that fails leaves the new file to `store clean`: removing it here could take the file of
        # a commit that did land.
        key = ModelKey(model.id, file_id, wrap_key(kek, data_key), kek.fingerprint, entry_bytes(final))
        self._registry.store_keys.replace_file(key, final)
        # Only now, with the registry pointing at the new file and key, are the old ones gone.
        if model.path != final:
            remove_entries([model.path])

    def export(self, name: str, target: Path) -> Path:
        """Decrypt a model to `target`, a new file (mode 0600; in it, when it is a folder), all or nothing:
        never over an existing file, never through a link (appliance/store/exports.py)."""
        model = self._find(name)
        if model.format == AWQ and self.is_encrypted(model):
            data_key = self._data_key(model)
            path = export_target(target, model.name)
            return write_new_folder(path, lambda tmp: decrypt_folder(model.path, data_key, tmp))
        return write_new_file(export_target(target, f"{model.name}.gguf"), self._plain_chunks(model))

    def decrypt_to_folder(self, model: ModelInfo, parent: Path) -> Path:
        """Decrypt an AWQ model into a new folder (mode 0700) under `parent`; the caller removes it."""
        found = self._current(model)
        try:
            return self._decrypt_folder_into(model, *found, parent)
        except (StoreIntegrityError, FileNotFoundError):
            if self._current(model) == found:
                raise
        # Its folder was re-encrypted (and the old one removed) while it was being read: once more.
        return self._decrypt_folder_into(model, *self._current(model), parent)

    def _decrypt_folder_into(self, model: ModelInfo, key: ModelKey, folder: Path, parent: Path) -> Path:
        data_key = unwrap_key(self._kek(), key.wrapped_key, what=f"model {model.name!r}")
        target = Path(tempfile.mkdtemp(prefix=folder_prefix(model.name), dir=parent))
        try:
            decrypt_folder(folder, data_key, target)
        except BaseException:
            remove_tree(target)
            raise
        return target

    def remove(self, name: str) -> ModelInfo:
        """Unregister a model, every version; encrypted ones also lose key and file (plain files stay)."""
        model = self._find(name)
        versions = sorted(self._registry.models.versions(model.name), key=lambda v: v.active)
        encrypted = [version.path for version in versions if self.is_encrypted(version)]
        for version in versions:  # the active one last: an interruption leaves the name still served
            self._registry.store_keys.remove_model(version.id)
        remove_entries(encrypted)
        return model

    def orphans(self) -> builtins.list[Path]:
        """Files and folders in the store that no registry row names; StoreBusyError while a writer runs."""
        with no_writers(self.folder):
            return self._unreferenced()

    def clean(self) -> builtins.list[Path]:
        """Remove the orphans (never a file a row names, never a running import's); returns them."""
        with no_writers(self.folder):
            found = self._unreferenced()
            remove_entries(found)
        return found

    def _unreferenced(self) -> builtins.list[Path]:
        # Every key's file id, of every model version, and the paths of the models listed.
        file_ids = {key.file_id for key in self._registry.store_keys.all()}
        paths = [model.path for model in self._registry.models.list()]
        return unreferenced(self.folder, file_ids, paths)

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
