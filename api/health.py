"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency

from api.chain_health import readiness
from api.state import GatewayState


@get("/health/live")
async def live() -> dict[str, str]:
    """The gateway process answers; needs no key."""
    return {"status": "ok"}


@get("/health/ready")
async def ready(gateway: NamedDependency[GatewayState]) -> Response[dict[str, Any]]:
    """200 when every route (or, without routes, every planned worker) serves, else 503; see readiness()."""
    body, status = readiness(gateway)
    if gateway.store.locked:  # serves nothing until an admin unlocks the store
        body["status"], body["store"], status = "locked", "locked", 503
    if gateway.supervisor.not_started:
        body["not_started"] = dict(gateway.supervisor.not_started)
    return Response(body, status_code=status)


@get("/metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
async def metrics(gateway: NamedDependency[GatewayState]) -> bytes:
    """Prometheus text exposition of the gateway's metrics, GPU gauges and vLLM workers' metrics."""
    return gateway.metrics.render(await gateway.supervisor.worker_metrics())
