"""The console's only source of data: the running gateway's admin API, behind a small typed interface."""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import msgspec

# Verifying decrypts and hashes a whole model in the gateway: minutes for a large one, not the usual seconds.
VERIFY_TIMEOUT_S = 1800.0
# Activating loads a worker and runs the checks before the answer comes: minutes for a big model.
ACTIVATION_TIMEOUT_S = 1800.0


class ConnectionLost(Exception):
    """The gateway did not answer (down, restarting, network gone)."""


class AdminApiError(Exception):
    """The gateway answered with an error; `message` is its OpenAI-shaped error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


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
    in_flight: float = 0.0
    errors: tuple[ErrorEvent, ...] = ()
    routes: tuple[RouteInfo, ...] = ()
    breakers: dict[str, str] = {}


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


class AdminSource(Protocol):
    """Everything the console reads and changes; the HTTP client in use, fixed data in snapshot tests."""

    async def overview(self) -> Overview:
        """Hardware, engines, counters and latest errors."""
        ...

    async def models(self) -> list[Model]:
        """The model registry."""
        ...

    async def set_model_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a model."""
        ...

    async def remove_model(self, name: str) -> None:
        """Remove a (disabled) model from the registry."""
        ...

    async def model_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first, the serving one marked."""
        ...

    async def activate_version(self, name: str, version: str) -> Activated:
        """Load `version` beside the serving one, check it, switch; AdminApiError (409) when refused."""
        ...

    async def roll_back(self, name: str) -> Activated:
        """Switch back to the version that served before, with the same checks."""
        ...

    async def import_model(self, path: str, name: str, encrypt: bool) -> Job:
        """Start importing a GGUF file that is on the appliance; the job runs in the gateway."""
        ...

    async def job(self, job_id: str) -> Job:
        """A background job's state and progress."""
        ...

    async def keys(self) -> list[Key]:
        """Every key, revoked ones included."""
        ...

    async def create_key(self, name: str, role: str) -> CreatedKey:
        """Create a key; its secret comes back this once."""
        ...

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key."""
        ...

    async def audit(self, limit: int = 500) -> list[AuditEvent]:
        """The newest audit events first."""
        ...

    async def routes(self) -> Routes:
        """Every fallback route with its links' circuit states."""
        ...

    async def put_route(self, route: RouteInfo) -> RouteInfo:
        """Replace a route (links in order and canned answer); the gateway applies it to the next request."""
        ...

    async def stored_models(self) -> list[StoredModel]:
        """Every model with whether it is encrypted and its size."""
        ...

    async def verify_model(self, name: str) -> Verified:
        """Decrypt a stored model end to end and check it."""
        ...

    async def store_status(self) -> dict[str, Any]:
        """The store's mode and lock state, as the gateway reports them."""
        ...

    async def unlock_store(self, passphrase: str) -> dict[str, Any]:
        """Unlock a passphrase-mode store."""
        ...

    async def lock_store(self) -> dict[str, Any]:
        """Lock the store again (running workers keep what they loaded)."""
        ...


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class AdminClient:
    """An async client of the gateway's admin API with one admin key."""

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ConnectionLost(f"{self._http.base_url} does not answer ({type(error).__name__})") from error
        if response.status_code >= 400:
            raise AdminApiError(response.status_code, _error_message(response))
        return response.json()

    async def overview(self) -> Overview:
        """Hardware, engines, counters and latest errors."""
        return msgspec.convert(await self._call("GET", "/admin/console/overview"), Overview)

    async def models(self) -> list[Model]:
        """The model registry."""
        body = await self._call("GET", "/admin/models")
        return msgspec.convert(body["data"], list[Model])

    async def set_model_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a model."""
        await self._call("POST", f"/admin/console/models/{name}/{'enable' if enabled else 'disable'}")

    async def remove_model(self, name: str) -> None:
        """Remove a (disabled) model from the registry."""
        await self._call("DELETE", f"/admin/console/models/{name}")

    async def model_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first, the serving one marked."""
        body = await self._call("GET", f"/admin/models/{name}/versions")
        return msgspec.convert(body["data"], list[ModelVersion])

    async def activate_version(self, name: str, version: str) -> Activated:
        """Load `version` beside the serving one, check it, switch (a long call); 409 when refused."""
        body = await self._call(
            "POST",
            f"/admin/models/{name}/activate",
            json={"version": version},
            timeout=ACTIVATION_TIMEOUT_S,
        )
        return msgspec.convert(body, Activated)

    async def roll_back(self, name: str) -> Activated:
        """Switch back to the version that served before, with the same checks (a long call)."""
        body = await self._call("POST", f"/admin/models/{name}/rollback", timeout=ACTIVATION_TIMEOUT_S)
        return msgspec.convert(body, Activated)

    async def import_model(self, path: str, name: str, encrypt: bool) -> Job:
        """Start importing a GGUF file that is on the appliance; the job runs in the gateway."""
        body = {"path": path, "name": name, "encrypt": encrypt}
        return msgspec.convert(await self._call("POST", "/admin/models/import", json=body), Job)

    async def job(self, job_id: str) -> Job:
        """A background job's state and progress."""
        return msgspec.convert(await self._call("GET", f"/admin/jobs/{job_id}"), Job)

    async def keys(self) -> list[Key]:
        """Every key, revoked ones included."""
        return msgspec.convert((await self._call("GET", "/admin/keys"))["data"], list[Key])

    async def create_key(self, name: str, role: str) -> CreatedKey:
        """Create a key; its secret comes back this once."""
        body = await self._call("POST", "/admin/keys", json={"name": name, "role": role})
        return msgspec.convert(body, CreatedKey)

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key."""
        await self._call("DELETE", f"/admin/keys/{key_id}")

    async def audit(self, limit: int = 500) -> list[AuditEvent]:
        """The newest audit events first."""
        body = await self._call("GET", "/admin/audit", params={"limit": limit})
        return msgspec.convert(body["data"], list[AuditEvent])

    async def routes(self) -> Routes:
        """Every fallback route with its links' circuit states."""
        return msgspec.convert(await self._call("GET", "/admin/routes"), Routes)

    async def put_route(self, route: RouteInfo) -> RouteInfo:
        """Replace a route (links in order and canned answer); the gateway applies it to the next request."""
        body = {"links": list(route.links), "canned": route.canned}
        return msgspec.convert(await self._call("PUT", f"/admin/routes/{route.name}", json=body), RouteInfo)

    async def stored_models(self) -> list[StoredModel]:
        """Every model with whether it is encrypted and its size."""
        body = await self._call("GET", "/admin/store/models")
        return msgspec.convert(body["data"], list[StoredModel])

    async def verify_model(self, name: str) -> Verified:
        """Decrypt a stored model end to end and check it (reads the whole model: a long call)."""
        body = await self._call("POST", f"/admin/store/models/{name}/verify", timeout=VERIFY_TIMEOUT_S)
        return msgspec.convert(body, Verified)

    async def store_status(self) -> dict[str, Any]:
        """The store's mode and lock state, as the gateway reports them."""
        body: dict[str, Any] = await self._call("GET", "/admin/store/status")
        return body

    async def unlock_store(self, passphrase: str) -> dict[str, Any]:
        """Unlock a passphrase-mode store."""
        body: dict[str, Any] = await self._call(
            "POST", "/admin/store/unlock", json={"passphrase": passphrase}
        )
        return body

    async def lock_store(self) -> dict[str, Any]:
        """Lock the store again (running workers keep what they loaded)."""
        body: dict[str, Any] = await self._call("POST", "/admin/store/lock")
        return body
