"""A fixed admin source for snapshot tests: the same data every run, no network, no clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from appliance.wire.residency import (
    GIB,
    KeepAliveSet,
    ModelLoaded,
    ModelUnloaded,
    ResidencyBudget,
    ResidencyReport,
    ResidentModel,
)
from appliance.wire.sse import SseEvent
from tui.app import ConsoleApp
from tui.history import MetricsHistory
from tui.schemas import (
    Activated,
    ActivationCheck,
    AuditEvent,
    Cpu,
    CreatedKey,
    Engine,
    ErrorEvent,
    Gpu,
    GpuUsage,
    Hardware,
    Job,
    Key,
    Model,
    ModelVersion,
    Overview,
    RouteInfo,
    Routes,
    StoredModel,
    Verified,
)

MIB = 1024 * 1024
ROUTES = Routes(
    data=(
        RouteInfo("chat", ("qwen2.5-7b", "smollm2-135m"), "The assistant is busy; please retry in a minute."),
        RouteInfo("small", ("smollm2-135m",), None),
    ),
    breakers={"qwen2.5-7b": "open", "smollm2-135m": "closed"},
)
BUDGET = ResidencyBudget(
    ram_budget_bytes=4 * GIB, ram_used_bytes=644_245_094, max_loaded=2, loaded=1, gpus=()
)
RESIDENCY = ResidencyReport(
    budget=BUDGET,
    data=(
        ResidentModel(
            name="smollm2-135m",
            version="2",
            state="loaded",
            engine="llamacpp",
            devices=("CPU",),
            memory_bytes=644_245_094,
            idle_s=42.0,
            expires_in_s=258.0,
            keep_alive_s=300.0,
            loads=3,
            last_used_at=1769853600.0,
        ),
    ),
)
OVERVIEW = Overview(
    hardware=Hardware(
        cpu=Cpu(model="AMD EPYC 7R13", physical_cores=16, ram_total_mib=131072, ram_available_mib=98304),
        gpus=(Gpu(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, memory_free_mib=40960),),
    ),
    gpu_usage=(
        GpuUsage(
            0, "NVIDIA H100 80GB HBM3", 0.45, memory_used_bytes=40599 * MIB, memory_total_bytes=81559 * MIB
        ),
    ),
    engines=(
        Engine(
            model="smollm2-135m",
            state="ready",
            pid=4242,
            restarts=0,
            version="2",
            engine="llamacpp",
            context_length=8192,
            slots=8,
            kv_pool_tokens=65536,
            kv_cache_bytes=1_509_949_440,
        ),
        Engine(
            model="qwen2.5-7b", state="restarting", pid=None, restarts=2, last_exit="signal 9", version="1"
        ),
    ),
    not_started={"llama-70b": "needs 42.0 GiB, 40.0 free"},
    requests_total=1234,
    completion_tokens_total=56789,
    ttft_p50_s=0.25,
    in_flight=3,
    errors=(
        ErrorEvent(time="2026-01-31T10:00:00", action="auth.failed", target="POST /v1/chat/completions"),
    ),
    routes=ROUTES.data,
    breakers=ROUTES.breakers,
    residency=BUDGET,
)
MODELS = [
    Model("smollm2-135m", "gguf", "Q4_1", 98_000_000, "enabled", ("default",), "llama", 2048, "2"),
    Model("qwen2.5-7b", "gguf", "Q4_K_M", 4_680_000_000, "disabled", (), "qwen2", 32768),
]
SMOL = "smollm2-135m"
VERSIONS = [
    ModelVersion(SMOL, "1", False, "gguf", "Q4_1", 98_000_000, "ab12" * 16, "/m/v1.gguf", 1769767200),
    ModelVersion(SMOL, "2", True, "gguf", "Q4_1", 98_000_000, "cd34" * 16, "/m/v2.gguf", 1769853600),
    ModelVersion(SMOL, "3", False, "gguf", "Q4_K_M", 105_000_000, "ef56" * 16, "/m/v3.gguf", 1769940000),
]
CHECKS = (ActivationCheck("deep probe", True, "4 tokens"), ActivationCheck("prompt 1", True, "answered"))
STORED = [
    StoredModel("smollm2-135m", True, 98_000_000, 98_100_000, ("default",)),
    StoredModel("qwen2.5-7b", False, 4_680_000_000, 0, ()),
]
STORE_STATUS: dict[str, Any] = {"mode": "passphrase", "locked": True, "encrypted_models": ["smollm2-135m"]}
KEYS = [
    Key("a1b2c3d4e5f6", "admin", "admin", "2026-01-30T09:00:00", "2026-01-31T10:00:00"),
    Key("0f9e8d7c6b5a", "billing app", "user", "2026-01-30T09:05:00", None),
    Key("112233445566", "old laptop", "user", "2026-01-01T12:00:00", None, revoked=True),
]
AUDIT = [
    AuditEvent(
        3,
        "2026-01-31T10:00:00",
        "auth.failed",
        "denied",
        target="POST /v1/chat/completions",
        client="192.0.2.7",
    ),
    AuditEvent(2, "2026-01-30T09:05:00", "keys.create", "success", "a1b2c3d4e5f6", "0f9e8d7c6b5a"),
    AuditEvent(1, "2026-01-30T09:00:00", "keys.create", "success", None, "a1b2c3d4e5f6", "cli"),
]
HISTORY = MetricsHistory.fixed(
    requests=[0, 1, 2, 3, 5, 4, 3, 6, 8, 7, 5, 4],
    tokens=[0, 40, 80, 120, 200, 160, 120, 240, 320, 280, 200, 160],
    ttft_ms=[250, 240, 260, 250, 300, 280, 250, 240, 250, 260, 250, 250],
)


class FixedSource:
    """The AdminSource protocol over constant data; changes are accepted and forgotten."""

    async def overview(self) -> Overview:
        """The fixed overview."""
        return OVERVIEW

    async def models(self) -> list[Model]:
        """The fixed registry."""
        return MODELS

    async def set_model_enabled(self, name: str, enabled: bool) -> None:
        """Accept and forget."""

    async def remove_model(self, name: str) -> None:
        """Accept and forget."""

    async def model_versions(self, name: str) -> list[ModelVersion]:
        """Three versions, the second serving."""
        return VERSIONS

    async def activate_version(self, name: str, version: str) -> Activated:
        """Every activation passes its checks."""
        return Activated(name, version, "2", CHECKS)

    async def roll_back(self, name: str) -> Activated:
        """Back to version 1."""
        return Activated(name, "1", "2", CHECKS)

    async def import_model(self, path: str, name: str, encrypt: bool) -> Job:
        """A job that is already done."""
        return Job("0123456789abcdef", "models.import", name, "succeeded", 98_000_000, 98_000_000)

    async def import_bundle(self, path: str) -> Job:
        """A bundle's job that is already done."""
        result = {"models": [{"name": "tiny"}]}
        return Job("0123456789abcdef", "models.import_bundle", path, "succeeded", 1, 1, None, result)

    async def job(self, job_id: str) -> Job:
        """The same finished job."""
        return Job(job_id, "models.import", "imported", "succeeded", 98_000_000, 98_000_000)

    async def keys(self) -> list[Key]:
        """The fixed keys."""
        return KEYS

    async def create_key(self, name: str, role: str) -> CreatedKey:
        """A constant key."""
        return CreatedKey("abcdefabcdef", name, role, "apl-abcdefabcdef-" + "x" * 43)

    async def revoke_key(self, key_id: str) -> None:
        """Accept and forget."""

    async def audit(self, limit: int = 500) -> list[AuditEvent]:
        """The fixed audit log."""
        return AUDIT

    async def routes(self) -> Routes:
        """The fixed routes."""
        return ROUTES

    async def put_route(self, route: RouteInfo) -> RouteInfo:
        """Accept and echo."""
        return route

    async def stored_models(self) -> list[StoredModel]:
        """The fixed store listing."""
        return STORED

    async def verify_model(self, name: str) -> Verified:
        """Every model verifies."""
        return Verified(name, True, "0" * 64)

    async def store_status(self) -> dict[str, Any]:
        """A locked passphrase-mode store."""
        return STORE_STATUS

    async def unlock_store(self, passphrase: str) -> dict[str, Any]:
        """Accept and forget."""
        return STORE_STATUS

    async def lock_store(self) -> dict[str, Any]:
        """Accept and forget."""
        return STORE_STATUS

    async def residency(self) -> ResidencyReport:
        """One model loaded and idle, within a 4 GiB budget."""
        return RESIDENCY

    async def load_model(self, name: str) -> ModelLoaded:
        """Every load takes 1.5 s."""
        return ModelLoaded(name=name, load_ms=1500.0, memory_bytes=644_245_094)

    async def unload_model(self, name: str) -> ModelUnloaded:
        """Accept and forget."""
        return ModelUnloaded(name=name, state="cold")

    async def set_pinned(self, name: str, pinned: bool) -> KeepAliveSet:
        """Accept and echo."""
        return KeepAliveSet(name=name, keep_alive_s=-1.0 if pinned else None, pinned=pinned)

    async def events(self) -> AsyncIterator[SseEvent]:
        """No events: fixed data never changes."""
        nothing: tuple[SseEvent, ...] = ()
        for event in nothing:
            yield event


def fixed_app() -> ConsoleApp:
    """The console over fixed data, not polling, with a fixed sparkline history."""
    history = MetricsHistory.fixed(
        list(HISTORY.requests_per_s), list(HISTORY.tokens_per_s), list(HISTORY.ttft_p50_ms)
    )
    return ConsoleApp(FixedSource(), poll_s=None, history=history, where="http://127.0.0.1:8080")
