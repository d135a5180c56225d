"""Admin routes of the encrypted model store: list, verify, export, remove. Admin keys only, all audited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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


def _store(gateway: GatewayState) -> ModelStore:
    return ModelStore(gateway.settings.home, gateway.registry)


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

    @post("/models/{name:str}/verify", status_code=200)
    async def verify_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Decrypt the model end to end; 422 `store_integrity_error` if any chunk or the hash fails."""
        model = await _audited(request, gateway, "models.verify", name, lambda: _store(gateway).verify(name))
        return {"name": model.name, "verified": True, "sha256": model.sha256}

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
        """Unregister the model; an encrypted one loses its file and key (a running worker keeps serving)."""
        model = await _audited(request, gateway, "models.remove", name, lambda: _store(gateway).remove(name))
        return {"name": model.name, "removed": True}
