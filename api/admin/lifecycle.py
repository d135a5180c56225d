"""Admin routes for model versions: list them, activate one (blue-green), roll back. Audited, admin only."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency

from api.auth import admin_only
from api.state import GatewayState
from appliance.activation import Activation, ActivationRefusedError, CheckOutcome
from appliance.errors import ApplianceError, ModelNotFoundError
from appliance.registry.keys import KeyInfo
from appliance.registry.models import ModelInfo


class ActivateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/models/{name}/activate."""

    version: str


def version_object(model: ModelInfo) -> dict[str, Any]:
    """One version as the admin API shows it."""
    return {
        "name": model.name,
        "version": model.version,
        "active": model.active,
        "format": model.format,
        "quantization": model.quantization,
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
        "path": str(model.path),
        "created": model.created,
    }


def _checks(checks: tuple[CheckOutcome, ...]) -> list[dict[str, Any]]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]


async def _switch(
    request: Request[KeyInfo, Any, Any], gateway: GatewayState, name: str, action: str, version: str | None
) -> dict[str, Any]:
    """Activate `version` (None: the previous one) and audit the outcome, refusals included."""
    activations = gateway.activations
    try:
        done: Activation = await (
            activations.rollback(name) if version is None else activations.activate(name, version)
        )
    except ApplianceError as error:
        detail = error.message
        if isinstance(error, ActivationRefusedError):
            detail += " | " + "; ".join(f"{c.name}: {'ok' if c.ok else c.detail}" for c in error.checks)
        gateway.registry.audit.record(
            action, outcome="failure", actor_key_id=request.user.id, target=name, detail=detail
        )
        raise
    gateway.registry.audit.record(
        action,
        outcome="success",
        actor_key_id=request.user.id,
        target=name,
        detail=f"version {done.model.version} (was {done.replaced_version})",
    )
    return {
        **version_object(done.model),
        "replaced_version": done.replaced_version,
        "checks": _checks(done.checks),
    }


class ModelVersionsController(Controller):
    """Versions of a registered model and switching between them while serving."""

    path = "/admin/models/{name:str}"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/versions")
    async def list_versions(self, gateway: NamedDependency[GatewayState], name: str) -> dict[str, Any]:
        """Every version of the model, oldest first; the active one and the one rollback goes to marked."""
        models = gateway.registry.models
        model = models.resolve(name)
        try:
            previous: str | None = models.previous(model.name).version
        except ModelNotFoundError:
            previous = None
        data = [{**version_object(v), "previous": v.version == previous} for v in models.versions(model.name)]
        return {"object": "list", "data": data}

    @post("/activate", status_code=200)
    async def activate(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        name: str,
        data: ActivateRequest,
    ) -> dict[str, Any]:
        """Load `version` beside the serving one, run the deep probe and the prompt suite, then switch.

        A version that fails to load or any check is refused (409 `activation_refused`) and audited; the
        serving version keeps serving. Requests in flight finish on the version they started on.
        """
        return await _switch(request, gateway, name, "models.activate", data.version)

    @post("/rollback", status_code=200)
    async def rollback(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Switch back to the version that served before the current one, with the same checks."""
        return await _switch(request, gateway, name, "models.rollback", None)
