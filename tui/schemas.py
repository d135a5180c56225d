"""What the admin API answers, as the console decodes it (msgspec structs; unknown fields are ignored)."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.wire.residency import ResidencyBudget


class Cpu(msgspec.Struct, frozen=True):
    """The host's CPU and memory."""

    model: str = "unknown"
    physical_cores: int = 1
    ram_total_mib: int = 0
    ram_available_mib: int | None = None


class Gpu(msgspec.Struct, frozen=True):
    """One GPU as the gateway detected it."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int | None = None


class Hardware(msgspec.Struct, frozen=True):
    """CPU and GPUs of the appliance."""

    cpu: Cpu = Cpu()
    gpus: tuple[Gpu, ...] = ()
    gpu_note: str = ""
    """Why no GPU was found, when none was."""


class GpuUsage(msgspec.Struct, frozen=True):
    """What one GPU is doing at this poll (from the gateway's NVML gauges)."""

    index: int
    name: str
    utilization_ratio: float = 0.0
    memory_used_bytes: float = 0.0
    memory_total_bytes: float = 0.0


class Engine(msgspec.Struct, frozen=True):
    """One worker and its state (ready, starting, restarting, down...)."""

    model: str
    state: str
    pid: int | None = None
    restarts: int = 0
    last_exit: str = ""
    version: str = ""
    engine: str = ""
    context_length: int = 0
    slots: int = 0
    kv_pool_tokens: int = 0
    """llama.cpp: the KV cells its slots share (0 for vLLM, which manages its own)."""
    kv_cache_bytes: int = 0


class ErrorEvent(msgspec.Struct, frozen=True):
    """A denied or failed action from the audit log."""

    time: str
    action: str
    target: str = ""
    detail: str = ""


class RouteInfo(msgspec.Struct, frozen=True):
    """A fallback route: its links in order, and the canned answer of last resort (None: off)."""

    name: str
    links: tuple[str, ...] = ()
    canned: str | None = None


class Overview(msgspec.Struct, frozen=True):
    """One poll of /admin/console/overview: counters are totals since the gateway started."""

    hardware: Hardware = Hardware()
    gpu_usage: tuple[GpuUsage, ...] = ()
    engines: tuple[Engine, ...] = ()
    not_started: dict[str, str] = {}
    requests_total: float = 0.0
    completion_tokens_total: float = 0.0
    ttft_p50_s: float | None = None
    """The median time to first token since the gateway started (interpolated in its bucket)."""
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    """The TTFT histogram: (upper bound, cumulative count) per finite bound; empty from older gateways."""
    ttft_count: float = 0.0
    """How many first tokens the histogram holds (its `+Inf` bucket)."""
    in_flight: float = 0.0
    errors: tuple[ErrorEvent, ...] = ()
    routes: tuple[RouteInfo, ...] = ()
    breakers: dict[str, str] = {}
    residency: ResidencyBudget | None = None
    """RAM of the budget used and models loaded (None from a gateway without residency)."""


class Routes(msgspec.Struct, frozen=True):
    """GET /admin/routes: every route, and the circuit state of every link used so far."""

    data: tuple[RouteInfo, ...] = ()
    breakers: dict[str, str] = {}


class StoredModel(msgspec.Struct, frozen=True):
    """A model as the encrypted store lists it."""

    name: str
    encrypted: bool
    size_bytes: int
    stored_bytes: int = 0
    aliases: tuple[str, ...] = ()


class Verified(msgspec.Struct, frozen=True):
    """A model decrypted end to end with every chunk and its SHA-256 checked."""

    name: str
    verified: bool
    sha256: str = ""


class Key(msgspec.Struct, frozen=True):
    """An API key as listed (never its secret)."""

    id: str
    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked: bool = False


class CreatedKey(msgspec.Struct, frozen=True):
    """A new key: `key` is its secret, shown this once."""

    id: str
    name: str
    role: str
    key: str


class Model(msgspec.Struct, frozen=True):
    """A registry entry."""

    name: str
    format: str
    quantization: str
    size_bytes: int
    status: str
    aliases: tuple[str, ...] = ()
    architecture: str = ""
    context_length: int = 0
    version: str = "1"
    """The version this name serves."""


class ModelVersion(msgspec.Struct, frozen=True):
    """One registered version of a model; `active` marks the one its name serves."""

    name: str
    version: str
    active: bool
    format: str = ""
    quantization: str = ""
    size_bytes: int = 0
    sha256: str = ""
    path: str = ""
    created: int = 0


class ActivationCheck(msgspec.Struct, frozen=True):
    """One check an activation ran on the new version (deep probe, a prompt of the suite)."""

    check: str
    ok: bool
    detail: str = ""


class Activated(msgspec.Struct, frozen=True):
    """A switch that went through: the version now serving, the one it replaced, and the checks it passed."""

    name: str
    version: str
    replaced_version: str
    checks: tuple[ActivationCheck, ...] = ()


class JobError(msgspec.Struct, frozen=True):
    """Why a background job failed, in the OpenAI error shape."""

    message: str
    type: str = ""
    code: str | None = None


class Job(msgspec.Struct, frozen=True):
    """A background job of the gateway (an import): its state and how far it got."""

    id: str
    kind: str
    target: str
    state: str
    bytes_done: int = 0
    bytes_total: int = 0
    error: JobError | None = None
    result: dict[str, Any] | None = None


class AuditEvent(msgspec.Struct, frozen=True):
    """One row of the audit log."""

    id: int
    time: str
    action: str
    outcome: str
    actor_key_id: str | None = None
    target: str = ""
    detail: str = ""
    client: str = ""
    """The address a refused request came from ("" for other events, and from an older gateway)."""
