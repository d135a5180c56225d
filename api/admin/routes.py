"""Admin routes for fallback chains: list routes with their links' health, and create or replace one."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.di import NamedDependency

from api.auth import admin_only
from api.state import GatewayState
from appliance.chain import Route
from appliance.errors import ApplianceError
from appliance.registry.keys import KeyInfo


class PutRouteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of PUT /admin/routes/{name}: links in order, and the canned answer (null switches it off)."""

    links: list[str]
    canned: str | None = None


def route_object(route: Route) -> dict[str, Any]:
    """A route as the admin API shows it."""
    return {"name": route.name, "links": list(route.links), "canned": route.canned}


class RoutesController(Controller):
    """Routes of the fallback chain; admin keys only, changes audited."""

    path = "/admin/routes"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/")
    async def list_routes(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Every route, and the circuit state of every link used so far."""
        routes = [route_object(r) for r in sorted(gateway.chains.routes.values(), key=lambda r: r.name)]
        breakers = {name: state.value for name, state in gateway.chains.breaker_states().items()}
        return {"object": "list", "data": routes, "breakers": breakers}

    @put("/{name:str}", status_code=200)
    async def put_route(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        name: str,
        data: PutRouteRequest,
    ) -> dict[str, Any]:
        """Create or replace a route; it applies to the next request and survives a restart."""
        audit = gateway.registry.audit
        try:
            route = gateway.chains.set_route(name, data.links, data.canned)
        except ApplianceError as error:
            audit.record(
                "routes.put",
                outcome="failure",
                actor_key_id=request.user.id,
                target=name,
                detail=error.message,
            )
            raise
        detail = f"links={','.join(route.links)} canned={'on' if route.canned is not None else 'off'}"
        audit.record(
            "routes.put", outcome="success", actor_key_id=request.user.id, target=name, detail=detail
        )
        return route_object(route)
