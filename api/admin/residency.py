"""Admin routes for model residency: what is loaded within the budget, and loading, unloading, pinning.

Loading and unloading are what a request and the idle timer do anyway, done now on an admin's word; pinning
sets the model's keep-alive to -1 in the registry (unpinning back to the `[residency]` default), which the
gateway reads live. Changes are audited, refusals included; reading is not (the console polls it).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency

from api.auth import admin_only
from api.state import GatewayState
from appliance.errors import ApplianceError, ModelNotFoundError
from appliance.registry.keys import KeyInfo
from appliance.serving.residency_views import BudgetView, ResidentView
from appliance.settings_residency import PINNED
from appliance.wire.residency import (
    KeepAliveSet,
    ModelLoaded,
    ModelUnloaded,
    ResidencyBudget,
    ResidencyReport,
    ResidentModel,
)


def resident_model(view: ResidentView) -> ResidentModel:
    """One model's residency in the admin API's shape."""
    return ResidentModel(
        name=view.name,
        version=view.version,
        state=view.state.value,
        engine=view.engine,
        devices=tuple(view.devices),
        memory_bytes=view.memory_bytes,
        in_flight=view.in_flight,
        idle_s=view.idle_s,
        expires_in_s=view.expires_in_s,
        keep_alive_s=view.keep_alive_s,
        pinned=view.pinned,
        loads=view.loads,
        last_used_at=view.last_used_at,
        last_error=view.last_error,
    )


def residency_budget(budget: BudgetView) -> ResidencyBudget:
    """The budget in the admin API's shape."""
    return ResidencyBudget(
        ram_budget_bytes=budget.ram_budget_bytes,
        ram_used_bytes=budget.ram_used_bytes,
        max_loaded=budget.max_loaded,
        loaded=budget.loaded,
        gpus=tuple((device, model) for device, model in budget.gpus),
    )


def residency_report(gateway: GatewayState) -> ResidencyReport:
    """The budget and every model's residency, as GET /admin/residency answers."""
    residency = gateway.residency
    return ResidencyReport(
        budget=residency_budget(residency.budget()),
        data=tuple(resident_model(view) for view in residency.views()),
    )


def _view(gateway: GatewayState, name: str) -> ResidentView:
    for view in gateway.residency.views():
        if view.name == name:
            return view
    raise ModelNotFoundError(f"model {name!r} is not served here (is it enabled?)", param="name")


def _audit(
    request: Request[KeyInfo, Any, Any],
    gateway: GatewayState,
    action: str,
    target: str,
    detail: str,
    outcome: str = "success",
) -> None:
    gateway.registry.audit.record(
        action, outcome=outcome, actor_key_id=request.user.id, target=target, detail=detail
    )


class ResidencyController(Controller):
    """The residency budget and each model's place in it; admin keys only."""

    path = "/admin"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/residency")
    async def residency(self, gateway: NamedDependency[GatewayState]) -> ResidencyReport:
        """The budget (RAM used of the budget, loaded of the most allowed, GPUs held) and every model."""
        return residency_report(gateway)

    @post("/models/{name:str}/load", status_code=200)
    async def load(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> ModelLoaded:
        """Load the model now (evicting idle unpinned ones as a request would); answers once it is loaded.

        404 for a name not registered; the residency's own error (409, 503: it can never fit, it failed to
        load, every other model is busy or pinned) with its figures otherwise."""
        model = gateway.registry.models.resolve(name)
        try:
            waited_ms = await gateway.residency.load(model.name)
        except ApplianceError as error:
            _audit(request, gateway, "models.load", model.name, error.message, "failure")
            raise
        memory = _view(gateway, model.name).memory_bytes
        _audit(request, gateway, "models.load", model.name, f"loaded in {waited_ms:.0f} ms, {memory} bytes")
        return ModelLoaded(name=model.name, load_ms=waited_ms, memory_bytes=memory)

    @post("/models/{name:str}/unload", status_code=200)
    async def unload(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> ModelUnloaded:
        """Stop the model's worker now; 409 `model_busy` while it has requests in flight."""
        model = gateway.registry.models.resolve(name)
        try:
            await gateway.residency.unload(model.name, reason="admin")
        except ApplianceError as error:
            _audit(request, gateway, "models.unload", model.name, error.message, "failure")
            raise
        _audit(request, gateway, "models.unload", model.name, "unloaded")
        return ModelUnloaded(name=model.name, state=_view(gateway, model.name).state.value)

    @post("/models/{name:str}/pin", status_code=200)
    async def pin(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> KeepAliveSet:
        """Keep the model loaded once it is: never unloaded for idleness, never evicted."""
        return _keep_alive(request, gateway, name, PINNED)

    @post("/models/{name:str}/unpin", status_code=200)
    async def unpin(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> KeepAliveSet:
        """Back to the `[residency] keep_alive_s` default: it unloads when idle and may be evicted."""
        return _keep_alive(request, gateway, name, None)


def _keep_alive(
    request: Request[KeyInfo, Any, Any], gateway: GatewayState, name: str, seconds: float | None
) -> KeepAliveSet:
    model = gateway.registry.models.resolve(name)
    gateway.registry.models.set_keep_alive(model.name, seconds)
    action = "models.pin" if seconds == PINNED else "models.unpin"
    _audit(request, gateway, action, model.name, keep_alive_detail(seconds))
    return KeepAliveSet(name=model.name, keep_alive_s=seconds, pinned=seconds == PINNED)


def keep_alive_detail(seconds: float | None) -> str:
    """The audit detail of a keep-alive change."""
    if seconds is None:
        return "keep_alive the [residency] default"
    return "keep_alive -1 (pinned)" if seconds == PINNED else f"keep_alive {seconds:g} s"
