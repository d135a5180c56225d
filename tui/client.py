"""The console's only source of data: the running gateway's admin API, behind a small typed interface."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import msgspec

from appliance.wire.residency import KeepAliveSet, ModelLoaded, ModelUnloaded, ResidencyReport
from appliance.wire.sse import SseEvent, SseReader
from tui.schemas import (
    Activated,
    AuditEvent,
    CreatedKey,
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

# Verifying decrypts and hashes a whole model in the gateway: minutes for a large one, not the usual seconds.
VERIFY_TIMEOUT_S = 1800.0
# Activating loads a worker and runs the checks before the answer comes: minutes for a big model.
ACTIVATION_TIMEOUT_S = 1800.0
# Loading a model answers once its worker is up (after evicting others): minutes for a big one.
LOAD_TIMEOUT_S = 1800.0
# The event stream sends a comment every 15 s: three missed in a row mean the connection is dead.
EVENTS_READ_TIMEOUT_S = 45.0
STREAM_OPENED = "stream.opened"
"""Given by `events()` first on every connection: events may have been missed before it, so re-read."""


class ConnectionLost(Exception):
    """The gateway did not answer (down, restarting, network gone)."""


class AdminApiError(Exception):
    """The gateway answered with an error; `message` is its OpenAI-shaped error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


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

    async def import_bundle(self, path: str) -> Job:
        """Start importing a signed model bundle that is on the appliance; the job runs in the gateway."""
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

    async def residency(self) -> ResidencyReport:
        """The memory budget and every enabled model's residency (loaded, idle, cold, ...)."""
        ...

    async def load_model(self, name: str) -> ModelLoaded:
        """Load a model now; answers once it is loaded (AdminApiError with the reason if it cannot)."""
        ...

    async def unload_model(self, name: str) -> ModelUnloaded:
        """Unload a model now; AdminApiError (409) while it has requests in flight."""
        ...

    async def set_pinned(self, name: str, pinned: bool) -> KeepAliveSet:
        """Pin a model (never unloaded while serving) or unpin it (the default keep-alive)."""
        ...

    def events(self) -> AsyncIterator[SseEvent]:
        """The gateway's events as they happen, STREAM_OPENED first; ConnectionLost when the stream drops."""
        ...


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class AdminClient:
    """An async client of the gateway's admin API with one admin key."""

    def __init__(
        self, base_url: str, key: str, *, timeout_s: float = 10.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            verify=verify,
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

    async def import_bundle(self, path: str) -> Job:
        """Start importing a signed model bundle on the appliance (its signature is checked at once)."""
        body = {"path": path}
        return msgspec.convert(await self._call("POST", "/admin/models/import-bundle", json=body), Job)

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

    async def residency(self) -> ResidencyReport:
        """The memory budget and every enabled model's residency (loaded, idle, cold, ...)."""
        return msgspec.convert(await self._call("GET", "/admin/residency"), ResidencyReport)

    async def load_model(self, name: str) -> ModelLoaded:
        """Load a model now; answers once it is loaded (a long call for a big model)."""
        body = await self._call("POST", f"/admin/models/{name}/load", timeout=LOAD_TIMEOUT_S)
        return msgspec.convert(body, ModelLoaded)

    async def unload_model(self, name: str) -> ModelUnloaded:
        """Unload a model now; AdminApiError (409) while it has requests in flight."""
        return msgspec.convert(await self._call("POST", f"/admin/models/{name}/unload"), ModelUnloaded)

    async def set_pinned(self, name: str, pinned: bool) -> KeepAliveSet:
        """Pin a model (never unloaded while serving) or unpin it (the default keep-alive)."""
        body = await self._call("POST", f"/admin/models/{name}/{'pin' if pinned else 'unpin'}")
        return msgspec.convert(body, KeepAliveSet)

    async def events(self) -> AsyncIterator[SseEvent]:
        """The gateway's events as they happen, STREAM_OPENED first; ConnectionLost when the stream drops."""
        timeout = httpx.Timeout(10.0, read=EVENTS_READ_TIMEOUT_S)
        try:
            async with self._http.stream("GET", "/admin/events", timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise AdminApiError(response.status_code, _error_message(response))
                yield SseEvent(STREAM_OPENED, "", "")
                reader = SseReader()
                async for line in response.aiter_lines():
                    if (event := reader.feed(line.rstrip("\r\n"))) is not None:
                        yield event
        except httpx.TransportError as error:
            lost = f"{self._http.base_url} event stream lost ({type(error).__name__})"
            raise ConnectionLost(lost) from error
        raise ConnectionLost(f"{self._http.base_url} ended the event stream")
