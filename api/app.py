"""The app factory: `create_app(settings, registry)` builds the gateway and its workers' supervisor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware

from api.admin.bundle_import import BundleImportController
from api.admin.console import ConsoleController
from api.admin.controller import AdminController
from api.admin.egress import egress_report
from api.admin.imports import ImportController
from api.admin.jobs import Jobs, JobsController
from api.admin.lifecycle import ModelVersionsController
from api.admin.routes import RoutesController
from api.admin.store import StoreController
from api.auth import PUBLIC_PATHS, ApiKeyAuthentication
from api.errors import EXCEPTION_HANDLERS
from api.health import live, metrics, ready
from api.limits import RequestLimits
from api.metrics import GatewayMetrics
from api.observability import in_flight_middleware, request_id_and_count_hook
from api.openai.chat.controller import create_chat_completion
from api.openai.completions.controller import create_completion
from api.openai.embeddings.controller import create_embeddings
from api.openai.models.controller import list_models, retrieve_model
from api.openai.responses.controller import create_response
from api.openai.tokenize.controller import detokenize, tokenize
from api.openapi import document_on_startup, openapi_config
from api.state import GatewayState
from appliance.chain import Chains
from appliance.hardware import detect_hardware, load_nvml
from appliance.planner import Plan
from appliance.probe import probe_forever
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.serving.events import Events
from appliance.serving.live import LiveModels
from appliance.serving.residency import Residency
from appliance.settings import Settings
from appliance.store.gate import StoreGate
from appliance.store.staging import remove_abandoned
from appliance.store.store import ModelStore
from appliance.store.tmpfs import sweep_stale_folders
from appliance.supervisor import Supervisor

log = logging.getLogger(__name__)


def create_app(settings: Settings, registry: Registry) -> Litestar:
    """The gateway for one appliance home; workers start in the lifespan and stop with it."""
    nvml = load_nvml()
    hardware = detect_hardware(nvml)
    models = registry.models.enabled()
    store = ModelStore(settings.home, registry, import_folders=settings.store.import_roots)
    if settings.store.require_encrypted:
        store.require_encrypted(models)
    metrics_ = GatewayMetrics(nvml if hardware.gpus else None)
    gate = StoreGate(
        settings.home, registry, settings.store.import_roots
    )  # passphrase mode: locked until an admin unlocks it
    supervisor = Supervisor(  # no worker yet: Residency adds those that fit, at start and on demand
        settings,
        [],
        Plan(hardware, ()),
        on_restart=lambda name: metrics_.worker_restarts.labels(name).inc(),
        model_source=gate.model_source(),
    )

    def admit(model: ModelInfo) -> None:
        if settings.store.require_encrypted:
            store.require_encrypted([model])

    events = Events()
    residency = Residency(
        settings,
        registry,
        supervisor,
        hardware,
        events,
        may_start=gate.may_start,
        admit=admit,
        recorder=metrics_.residency,
    )
    metrics_.residency.watch(residency)
    live_models = LiveModels(settings, registry, supervisor, hardware, residency=residency)
    chains = Chains(settings, registry)
    gateway = GatewayState(
        settings, registry, supervisor, metrics_, chains, gate, live_models, residency, events
    )
    limits = RequestLimits(settings.limits)
    jobs = Jobs()

    @asynccontextmanager
    async def run_workers(_app: Litestar) -> AsyncIterator[None]:
        for folder in sweep_stale_folders(settings.run_dir):  # a killed gateway runs no clean-up
            log.warning("removed %s: decrypted model files left by a gateway that was killed", folder)
        for folder in remove_abandoned(settings.home):  # nor does a killed bundle import
            log.warning("removed %s: an unpacked model bundle left by an import that was killed", folder)
        registry.audit.start(settings.audit)  # from here on no request waits for an audit row's commit
        try:
            await residency.start()  # the enabled models that fit together; the others load on demand
            probing = asyncio.create_task(
                probe_forever(supervisor, gateway.chains, settings.fallback, metrics_.fallback.probe_done)
            )
            following = asyncio.create_task(live_models.follow())  # registry changes, while serving
            expiring = asyncio.create_task(residency.keep_alive())  # idle models unloaded
            try:
                yield
            finally:
                for task in (following, probing, expiring):
                    task.cancel()
                await asyncio.gather(following, probing, expiring, return_exceptions=True)
                await supervisor.stop()
                await live_models.close()
                await residency.close()
        finally:
            await asyncio.to_thread(registry.audit.close)  # commits what is queued: nothing is lost

    async def provide_gateway() -> GatewayState:
        return gateway

    async def provide_limits() -> RequestLimits:
        return limits

    async def provide_jobs() -> Jobs:
        return jobs

    return Litestar(
        route_handlers=[
            create_chat_completion,
            create_completion,
            create_response,
            create_embeddings,
            list_models,
            retrieve_model,
            tokenize,
            detokenize,
            live,
            ready,
            metrics,
            AdminController,
            RoutesController,
            ConsoleController,
            ModelVersionsController,
            StoreController,
            ImportController,
            BundleImportController,
            JobsController,
            egress_report,
        ],
        state=State({"gateway": gateway}),
        dependencies={
            "gateway": Provide(provide_gateway),
            "limits": Provide(provide_limits),
            "jobs": Provide(provide_jobs),
        },
        middleware=[
            in_flight_middleware(metrics_),
            DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[request_id_and_count_hook(metrics_)],
        lifespan=[run_workers],
        request_max_body_size=settings.limits.largest_body_bytes,
        openapi_config=openapi_config(),
        on_startup=[document_on_startup],
    )
