"""Readiness with fallback chains: each engine's state, each link's circuit, each route's serving link."""

from __future__ import annotations

from typing import Any

from api.state import GatewayState
from appliance.breaker import BreakerState
from appliance.engines.canned import CANNED_MODEL
from appliance.supervisor import WorkerState


def link_serves(gateway: GatewayState, model: str) -> bool:
    """Whether a link could take a request now: its engine is ready, or its model cold (a request loads
    it), and its circuit not open."""
    worker = gateway.supervisor.workers.get(model)
    ready = worker is not None and worker.state is WorkerState.READY
    if not (ready or gateway.residency.cold_servable(model)):
        return False
    return gateway.chains.breaker(model).state is not BreakerState.OPEN


def readiness(gateway: GatewayState) -> tuple[dict[str, Any], int]:
    """The /health/ready body and status.

    Without routes: ready when every engine is, bar one loading for the first time while another serves
    (a model added while serving does not make the node unready), and at least one model is loaded or cold
    (servable: its first request loads it). With routes: `ready` when every
    route is served by its primary; `degraded` (still 200, the node answers) when some route is not but at
    least one route is served by a model; `not_ready` (503) when no model serves any route. A route that is
    canned by design (no links) does not count; a route left with only its canned answer counts as not
    served.
    """
    workers = gateway.supervisor.workers.values()
    body: dict[str, Any] = {"engines": {w.model.name: w.state.value for w in workers}}
    routes = gateway.chains.routes
    if not routes:
        loading = [w for w in workers if w.state is WorkerState.STARTING and w.restarts == 0]
        cold = any(map(gateway.residency.cold_servable, gateway.residency.names()))
        ready = (cold or any(w.state is WorkerState.READY for w in workers)) and all(
            w.state is WorkerState.READY or w in loading for w in workers
        )
        body["status"] = "ready" if ready else "not_ready"
    else:
        serving: dict[str, Any] = {}
        served = degraded = False
        for route in routes.values():
            found = next((link for link in route.links if link_serves(gateway, link)), None)
            if found is None and route.canned is not None:
                found = CANNED_MODEL
            serving[route.name] = {"serving": found, "primary": route.links[0] if route.links else None}
            if not route.links:
                continue
            served = served or found not in (None, CANNED_MODEL)
            degraded = degraded or found != route.links[0]
        body["routes"] = serving
        ready = served
        body["status"] = ("degraded" if degraded else "ready") if ready else "not_ready"
    body["breakers"] = {name: state.value for name, state in gateway.chains.breaker_states().items()}
    body["probes"] = {
        name: {"ok": result.ok, "detail": result.detail, "at": result.at}
        for name, result in gateway.chains.probes.items()
    }
    return body, 200 if ready else 503
