"""Admin routes of the encrypted store: list, verify, re-encrypt, export, remove, unlock, lock.

Admin only, audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency

from api.auth import admin_only
from api.state import GatewayState
from appliance.errors import ApplianceError, InvalidRequestError
from appliance.registry.keys import KeyInfo
from appliance.store.store import ModelStore

T = TypeVar("T")


class ExportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/store/models/{name}/export: where on the appliance to write the plaintext."""

    to: str


class UnlockRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/store/unlock: the admin passphrase (never logged, never stored)."""

    passphrase: str


def _store(gateway: GatewayState) -> ModelStore:
    return gateway.store.store()


async def _audited_async(
    request: Request[KeyInfo, Any, Any], gateway: GatewayState, action: str, work: Awaitable[T]
) -> T:
    """Await gateway work and audit its success or failure (the error's message, never the request)."""
    audit = gateway.registry.audit
    try:
        result = await work
    except ApplianceError as error:
        audit.record(action, outcome="failure", actor_key_id=request.user.id, detail=error.message)
        raise
    audit.record(action, outcome="success", actor_key_id=request.user.id)
    return result


async def _audited(
    request: Request[KeyInfo, Any, Any],
    gateway: GatewayState,
    action: str,
    target: str,
    work: Callable[[], T],
) -> T:
    """Run store work off the event loop (it reads whole models) and audit its success or failure."""
    audit = gateway.registry.audit
    try:
        result = await asyncio.to_thread(work)
    except ApplianceError as error:
        audit.record(
            action, outcome="failure", actor_key_id=request.user.id, target=target, detail=error.message
        )
        raise
    audit.record(action, outcome="success", actor_key_id=request.user.id, target=target)
    return result


class StoreController(Controller):
    """The encrypted store as an admin (or the console) sees it."""

    path = "/admin/store"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/models")
    async def list_stored(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Every model: encrypted or not, its size and its size in the store."""
        data = [
            {
                "name": m.name,
                "aliases": list(m.aliases),
                "encrypted": m.encrypted,
                "size_bytes": m.plain_bytes,
                "stored_bytes": m.stored_bytes,
            }
            for m in _store(gateway).list()
        ]
        return {"object": "list", "data": data}

    @get("/status")
    async def store_status(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Whether the store is locked, and whether its key comes from a key file or a passphrase."""
        return gateway.store.status(gateway.supervisor)

    @post("/unlock", status_code=200)
    async def unlock_store(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], data: UnlockRequest
    ) -> dict[str, Any]:
        """Unlock a passphrase-mode store and start its encrypted workers (400 on a wrong passphrase)."""
        work = gateway.store.unlock(data.passphrase, gateway.supervisor)
        started = await _audited_async(request, gateway, "store.unlock", work)
        return {**gateway.store.status(gateway.supervisor), "started": started}

    @post("/lock", status_code=200)
    async def lock_store(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState]
    ) -> dict[str, Any]:
        """Stop the encrypted workers and forget the key; model requests get 503 `store_locked` again."""
        stopped = await _audited_async(request, gateway, "store.lock", gateway.store.lock(gateway.supervisor))
        return {**gateway.store.status(gateway.supervisor), "stopped": stopped}

    @post("/models/{name:str}/verify", status_code=200)
    async def verify_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Decrypt the model end to end; 422 `store_integrity_error` if any chunk or the hash fails."""
        model = await _audited(request, gateway, "models.verify", name, lambda: _store(gateway).verify(name))
        return {"name": model.name, "verified": True, "sha256": model.sha256}

    @post("/models/{name:str}/reencrypt", status_code=200)
    async def reencrypt_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Re-encrypt the model under a new data key; the old file goes only once the new one verifies."""
        model = await _audited(
            request, gateway, "models.reencrypt", name, lambda: _store(gateway).reencrypt(name)
        )
        # A running worker keeps the plaintext it loaded; the next start decrypts the new file.
        return {"name": model.name, "reencrypted": True, "sha256": model.sha256}

    @post("/models/{name:str}/export", status_code=200)
    async def export_model(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        name: str,
        data: ExportRequest,
    ) -> dict[str, Any]:
        """Decrypt the model to an absolute path on the appliance (a new file, mode 0600)."""
        target = Path(data.to)
        if not target.is_absolute():
            raise InvalidRequestError("`to` must be an absolute path on the appliance", param="to")
        written = await _audited(
            request, gateway, "models.export", name, lambda: _store(gateway).export(name, target)
        )
        return {"name": name, "path": str(written)}

    @delete("/models/{name:str}", status_code=200)
    async def remove_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Unregister the model; an encrypted one loses its file and key. New requests get 404 at once; its
        worker finishes the requests in flight (from the copy it loaded), then stops."""
        model = await _audited(request, gateway, "models.remove", name, lambda: _store(gateway).remove(name))
        gateway.live.sync()
        return {"name": model.name, "removed": True}
