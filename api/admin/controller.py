"""Admin routes: keys, models, engines and the audit log. Admin keys only; changes are audited, reads are
not (the console polls them, and a log full of its own reads hides the changes it is there to show)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency

from api.auth import admin_only
from api.state import GatewayState
from appliance.registry.keys import KeyInfo, Role


class CreateKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/keys."""

    name: str
    role: Role = Role.USER


def _key_object(key: KeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role.value,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
    }


def engine_objects(gateway: GatewayState) -> list[dict[str, Any]]:
    """Each worker as the admin API shows it: its model, state, pid, restarts and last exit, and what the
    plan gave it (per-request context, slots or sequences, and for llama.cpp the KV pool they share)."""
    return [
        {
            "model": w.model.name,
            "version": w.model.version,
            "state": w.state.value,
            "pid": w.pid,
            "restarts": w.restarts,
            "last_exit": w.last_exit,
            "engine": w.launch.plan.engine,
            "context_length": w.launch.plan.context_length,
            "slots": w.launch.plan.concurrency,
            "kv_pool_tokens": w.launch.plan.kv_pool_tokens,
            "kv_cache_bytes": w.launch.plan.kv_cache_bytes,
        }
        for w in gateway.supervisor.workers.values()
    ]


def _audit(
    request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], action: str, target: str = ""
) -> None:
    gateway.registry.audit.record(action, outcome="success", actor_key_id=request.user.id, target=target)


class AdminController(Controller):
    """Everything an admin (or the console) can see and change through the API."""

    path = "/admin"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/keys")
    async def list_keys(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Every key, revoked ones included; never their secrets. Not audited: reading changes nothing."""
        return {"object": "list", "data": [_key_object(k) for k in gateway.registry.keys.list()]}

    @post("/keys", status_code=201)
    async def create_key(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        data: CreateKeyRequest,
    ) -> dict[str, Any]:
        """A new key; the `key` field is the only time its secret is shown."""
        created = gateway.registry.keys.create(data.name, data.role)
        _audit(request, gateway, "keys.create", created.info.id)
        return {**_key_object(created.info), "key": created.secret}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], key_id: str
    ) -> dict[str, Any]:
        """Revoke a key; it fails from the next request on."""
        revoked = gateway.registry.keys.revoke(key_id)
        _audit(request, gateway, "keys.revoke", key_id)
        return _key_object(revoked)

    @get("/engines")
    async def list_engines(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Each worker: its model, state, pid and restarts."""
        return {"object": "list", "data": engine_objects(gateway)}

    @get("/models")
    async def list_registered_models(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """The registry's models with what their files say."""
        data = [
            {
                "name": m.name,
                "version": m.version,
                "aliases": list(m.aliases),
                "format": m.format,
                "architecture": m.architecture,
                "quantization": m.quantization,
                "size_bytes": m.size_bytes,
                "sha256": m.sha256,
                "context_length": m.context_length,
                "chat_template": m.has_chat_template or m.chat_template_override is not None,
                "status": m.status,
            }
            for m in gateway.registry.models.list()
        ]
        return {"object": "list", "data": data}

    @get("/audit")
    async def list_audit(self, gateway: NamedDependency[GatewayState], limit: int = 100) -> dict[str, Any]:
        """The newest audit events first; `client`: a refused request's address ("" for other events).

        Not audited: the console reads it on every visit to its audit screen."""
        # recent() first waits for queued rows to be committed: off the event loop, like the writes.
        events = await asyncio.to_thread(gateway.registry.audit.recent, max(1, min(limit, 1000)))
        data = [
            {
                "id": e.id,
                "time": e.time.isoformat(),
                "actor_key_id": e.actor_key_id,
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
                "detail": e.detail,
                "client": e.client,
            }
            for e in events
        ]
        return {"object": "list", "data": data}
