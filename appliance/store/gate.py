"""Passphrase mode at serve time: the store starts locked, and unlocking it starts the encrypted workers.

In key-file mode the gate is always open. In passphrase mode the gateway starts with the gate shut: it
answers health checks and the admin API, refuses model requests with 503 `store_locked`, and starts no
worker of an encrypted model. `unlock()` checks the passphrase against the KEK fingerprint the registry keeps,
then keeps the derived KEK (never the passphrase) in memory and starts those workers; `lock()` forgets the
KEK and stops them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from appliance.engines.kind import Launch
from appliance.errors import ConflictError, InvalidRequestError
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.store.keys import Kek, make_non_dumpable, passphrase_kek, scrypt_cost
from appliance.store.loading import ModelSource, sealed_model_source
from appliance.store.locked import StoreLockedError
from appliance.store.store import ModelStore
from appliance.supervisor import Supervisor

StoreMode = Literal["keyfile", "passphrase"]
UNLOCK_HINT = "unlock it with `appliance store unlock` or POST /admin/store/unlock"


class WrongPassphraseError(InvalidRequestError):
    """The passphrase given to unlock the store does not derive the store's KEK."""

    code = "wrong_store_passphrase"


class NotPassphraseModeError(ConflictError):
    """Unlock or lock asked of a store whose KEK comes from a key file."""

    code = "store_not_in_passphrase_mode"


class StoreGate:
    """Whether the encrypted store is open for serving, and the workers that wait for it."""

    def __init__(self, home: Path, registry: Registry, import_folders: tuple[Path, ...] = ()) -> None:
        self._home = home
        self._registry = registry
        self._import_folders = import_folders
        record = registry.store_keys.kek()
        # Read once at start: a rotation to or from passphrase mode takes effect at the next `serve`.
        self.mode: StoreMode = (
            "passphrase" if record is not None and record.mode == "passphrase" else "keyfile"
        )
        self._kek: Kek | None = None
        self._changing = asyncio.Lock()

    @property
    def locked(self) -> bool:
        """True while a passphrase-mode store has not been unlocked (or was locked again)."""
        return self.mode == "passphrase" and self._kek is None

    def store(self) -> ModelStore:
        """The model store, opened with the unlocked KEK when there is one."""
        return ModelStore(self._home, self._registry, kek=self._kek, import_folders=self._import_folders)

    def model_source(self) -> ModelSource:
        """The supervisor's model source: sealed memfds, decrypted with the KEK current at each start."""

        @asynccontextmanager
        async def source(launch: Launch) -> AsyncIterator[tuple[Launch, tuple[int, ...]]]:
            async with sealed_model_source(self.store())(launch) as opened:
                yield opened

        return source

    def encrypted_workers(self, supervisor: Supervisor) -> list[str]:
        """Names of the supervised workers whose model is in the encrypted store."""
        store = self.store()
        return [name for name, w in supervisor.workers.items() if store.is_encrypted(w.model)]

    def startable_workers(self, supervisor: Supervisor) -> list[str]:
        """The workers `serve` may start now: all of them, or while locked only those of plain models."""
        encrypted = set(self.encrypted_workers(supervisor)) if self.locked else set()
        return [name for name in supervisor.workers if name not in encrypted]

    def may_start(self, model: ModelInfo) -> bool:
        """Whether a worker of `model` may start now: not while the store that holds it is locked."""
        return not (self.locked and self.store().is_encrypted(model))

    def refuse_if_locked(self) -> None:
        """Raise 503 `store_locked` while the store is locked (every model request checks this first)."""
        if self.locked:
            raise StoreLockedError(f"The model store is locked; {UNLOCK_HINT}.")

    async def unlock(self, passphrase: str, supervisor: Supervisor) -> int:
        """Check the passphrase, keep the KEK, start the encrypted workers; returns how many started."""
        if self.mode != "passphrase":
            raise NotPassphraseModeError("the store's key comes from a key file; there is nothing to unlock")
        record = self._registry.store_keys.kek()
        if not passphrase or record is None or record.scrypt_salt is None:
            raise WrongPassphraseError("wrong store passphrase", param="passphrase")
        make_non_dumpable()  # from here on this process holds the KEK
        # scrypt takes about half a second of CPU and 128 MiB: keep the event loop answering meanwhile.
        n = scrypt_cost(record.scrypt_n)
        kek = await asyncio.to_thread(passphrase_kek, passphrase, record.scrypt_salt, n)
        if kek.fingerprint != record.fingerprint:
            raise WrongPassphraseError("wrong store passphrase", param="passphrase")
        async with self._changing:
            self._kek = kek
            names = self.encrypted_workers(supervisor)
            await supervisor.start(names)
        return len(names)

    async def lock(self, supervisor: Supervisor) -> int:
        """Forget the KEK and stop the encrypted workers; returns how many were stopped."""
        if self.mode != "passphrase":
            raise NotPassphraseModeError("the store's key comes from a key file; it cannot be locked")
        async with self._changing:
            self._kek = None
            names = self.encrypted_workers(supervisor)
            await supervisor.stop_workers(names)
        return len(names)

    def status(self, supervisor: Supervisor) -> dict[str, object]:
        """What GET /admin/store/status shows: locked or not, and where the KEK comes from."""
        return {
            "locked": self.locked,
            "mode": "passphrase" if self.mode == "passphrase" else "key_file",
            "encrypted_models": self.encrypted_workers(supervisor),
        }
