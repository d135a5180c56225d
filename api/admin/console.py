"""Admin routes the console needs: one overview to poll, and enabling, disabling and removing models."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from prometheus_client.core import Metric

from api.admin.controller import engine_objects
from api.admin.residency import residency_budget
from api.admin.routes import route_object
from api.auth import admin_only
from api.metrics import GatewayMetrics
from api.state import GatewayState
from appliance.errors import ConflictError
from appliance.hardware import detect_hardware, load_nvml
from appliance.registry.keys import KeyInfo
from appliance.registry.models import ModelInfo

LATEST_ERRORS = 8


GPU_PREFIX = "appliance_gpu_"
TTFT = "appliance_time_to_first_token_seconds"


def _samples(metrics: GatewayMetrics) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Every sample of the gateway's own metrics summed over labels, by sample name (`le` kept apart),
    and each GPU's gauges apart. One pass: each pass reads NVML through the metrics' GPU collector."""
    gpus: dict[str, dict[str, Any]] = {}
    families = list(metrics.registry.collect())
    for family in families:
        for sample in family.samples:
            if sample.name.startswith(GPU_PREFIX):
                gpu = gpus.setdefault(
                    sample.labels["gpu"], {"index": int(sample.labels["gpu"]), "name": sample.labels["name"]}
                )
                gpu[sample.name.removeprefix(GPU_PREFIX)] = sample.value
    return sample_totals(families), sorted(gpus.values(), key=lambda g: int(g["index"]))


def sample_totals(families: Iterable[Metric]) -> dict[str, float]:
    """Every sample but the GPUs' summed over labels, by sample name (`le` kept apart)."""
    totals: dict[str, float] = defaultdict(float)
    for family in families:
        for sample in family.samples:
            if not sample.name.startswith(GPU_PREFIX):
                suffix = f"{{le={sample.labels['le']}}}" if "le" in sample.labels else ""
                totals[sample.name + suffix] += sample.value
    return totals


def live_figures(totals: dict[str, float], streaming_tokens: int = 0) -> dict[str, Any]:
    """The overview's counters, from which the console computes its rates and its TTFT median."""
    return {
        "requests_total": totals.get("appliance_requests_total", 0.0),
        # Tokens of finished responses, plus those of streams still going: a response's usage is known
        # only at its end, and the rate read 0.0 for as long as a long stream ran.
        "completion_tokens_total": totals.get("appliance_completion_tokens_total", 0.0) + streaming_tokens,
        "ttft_p50_s": histogram_p50(totals, TTFT),
        # Cumulative counts at each finite bound, and the count: the console takes the median of what
        # arrived between two polls, so the figure moves with the load (the total's hardly does).
        "ttft_buckets": [[b, c] for b, c in histogram_buckets(totals, TTFT) if b != float("inf")],
        "ttft_count": totals.get(f"{TTFT}_count", 0.0),
        "in_flight": totals.get("appliance_requests_in_flight", 0.0),
    }


def histogram_buckets(totals: dict[str, float], name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets (summed over labels) as (upper bound, count), `+Inf` last."""
    prefix = f"{name}_bucket{{le="
    return sorted(
        (float(key[len(prefix) : -1]), count) for key, count in totals.items() if key.startswith(prefix)
    )


def histogram_p50(totals: dict[str, float], name: str) -> float | None:
    """The median of a histogram (summed over labels), interpolated inside its bucket as Prometheus's
    `histogram_quantile` does; None if empty. (The bucket's upper bound alone read 100 ms in every capture.)
    """
    buckets = histogram_buckets(totals, name)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = total / 2, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bound: that bound is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


def _model_object(m: ModelInfo) -> dict[str, Any]:
    return {"name": m.name, "status": m.status, "aliases": list(m.aliases)}


def _audit(request: Request[KeyInfo, Any, Any], gateway: GatewayState, action: str, target: str) -> None:
    gateway.registry.audit.record(action, outcome="success", actor_key_id=request.user.id, target=target)


def _set_status(
    request: Request[KeyInfo, Any, Any], gateway: GatewayState, name: str, status: str, action: str
) -> dict[str, Any]:
    model = gateway.registry.models.set_status(name, status)
    _audit(request, gateway, action, name)
    gateway.live.sync()  # now rather than at the next poll: the answer says what is already true
    return _model_object(model)


class ConsoleController(Controller):
    """What `appliance tui` reads and changes beyond the plain admin routes; admin keys only."""

    path = "/admin/console"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/overview")
    async def overview(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        """Hardware, GPU use now, engines, counters for rates, TTFT p50, in flight, routes, latest errors.

        Not audited: the console polls it every second, and reading it changes nothing."""
        totals, gpu_usage = _samples(gateway.metrics)
        hardware = detect_hardware(load_nvml())
        latest = await asyncio.to_thread(gateway.registry.audit.recent, 200)  # waits for queued rows
        errors = [
            {"time": e.time.isoformat(), "action": e.action, "target": e.target, "detail": e.detail}
            for e in latest
            if e.outcome != "success"
        ][:LATEST_ERRORS]
        engines = engine_objects(gateway)
        return {
            "hardware": msgspec.to_builtins(hardware),
            "gpu_usage": gpu_usage,
            "engines": engines,
            "not_started": dict(gateway.supervisor.not_started),
            **live_figures(totals, gateway.metrics.streaming_tokens),
            "errors": errors,
            "routes": [route_object(r) for r in sorted(gateway.chains.routes.values(), key=lambda r: r.name)],
            "breakers": {name: state.value for name, state in gateway.chains.breaker_states().items()},
            "residency": msgspec.to_builtins(residency_budget(gateway.residency.budget())),
        }

    @post("/models/{name:str}/enable", status_code=200)
    async def enable_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Mark a model enabled; its worker starts at once (if the plan fits it beside the others)."""
        return _set_status(request, gateway, name, "enabled", "models.enable")

    @post("/models/{name:str}/disable", status_code=200)
    async def disable_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Mark a model disabled; new requests get 404 at once, its worker stops once idle."""
        return _set_status(request, gateway, name, "disabled", "models.disable")

    @delete("/models/{name:str}", status_code=200)
    async def remove_model(
        self, request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState], name: str
    ) -> dict[str, Any]:
        """Remove a disabled model from the registry; an enabled one is refused (409): the console asks for
        the step that stops its traffic first."""
        model = gateway.registry.models.resolve(name)
        if model.status == "enabled":
            raise ConflictError(f"model {name!r} is enabled: disable it first", param="name")
        removed = gateway.registry.models.remove(model.name)
        _audit(request, gateway, "models.remove", name)
        gateway.live.sync()
        return _model_object(removed)
