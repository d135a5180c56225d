"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency

from api.state import GatewayState
from appliance.supervisor import WorkerState


@get("/health/live")
async def live() -> dict[str, str]:
    """The gateway process answers; needs no key."""
    return {"status": "ok"}


@get("/health/ready")
async def ready(gateway: NamedDependency[GatewayState]) -> Response[dict[str, Any]]:
    """200 when every planned worker answers, else 503 with each engine's state."""
    workers = gateway.supervisor.workers.values()
    engines = {w.model.name: w.state.value for w in workers}
    is_ready = bool(engines) and all(w.state is WorkerState.READY for w in workers)
    body: dict[str, Any] = {"status": "ready" if is_ready else "not_ready", "engines": engines}
    if gateway.supervisor.not_started:
        body["not_started"] = dict(gateway.supervisor.not_started)
    return Response(body, status_code=200 if is_ready else 503)


@get("/metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
async def metrics(gateway: NamedDependency[GatewayState]) -> bytes:
    """Prometheus text exposition of the gateway's metrics, GPU gauges and vLLM workers' metrics."""
    return gateway.metrics.render(await gateway.supervisor.worker_metrics())
