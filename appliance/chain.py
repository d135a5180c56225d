"""Routes and their fallback chains: which links a request may go to, and the breaker of each link.

A request names a route or a model. A route (settings `[routes.NAME]`, overridden by what an admin stored
through the API) is an ordered list of registered models and an optional canned answer; a plain model name
is a chain of one link without a canned answer, so it behaves as it did before routes existed. A route
name wins over a model alias of the same name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.breaker import BreakerState, CircuitBreaker
from appliance.errors import InvalidRequestError, ModelNotFoundError
from appliance.registry.registry import Registry
from appliance.settings import Settings

MAX_ROUTE_NAME = 128
MAX_CANNED_CHARS = 16_384


@dataclass(frozen=True)
class Route:
    """What a request's `model` resolves to: links in order and the answer of last resort."""

    name: str
    links: tuple[str, ...]
    canned: str | None
    is_route: bool
    """False for a plain model name: no failover, the engine's own errors come back as they are."""
    prefer_warm: bool = False
    """Skip a cold link (reason `cold`) when a later link is loaded, rather than wait for its load."""


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of the last deep probe of one engine."""

    ok: bool
    detail: str
    at: float
    """Wall-clock time of the probe, Unix seconds."""


class Chains:
    """The routes of one gateway, the circuit breaker of every link, and the deep probes' last results."""

    def __init__(
        self, settings: Settings, registry: Registry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fallback = settings.fallback
        self._registry = registry
        self._clock = clock
        self._routes = {
            name: Route(name, tuple(route.links), route.canned, True, route.prefer_warm)
            for name, route in settings.routes.items()
        }
        for stored in registry.routes.list():
            self._routes[stored.name] = Route(stored.name, stored.links, stored.canned, True)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._opened: dict[str, asyncio.Event] = {}
        self.probes: dict[str, ProbeResult] = {}

    @property
    def routes(self) -> dict[str, Route]:
        """Every route by name (a copy)."""
        return dict(self._routes)

    def resolve(self, name: str) -> Route:
        """The route `name`, else a one-link chain for the enabled model it names, else ModelNotFoundError
        (a disabled model is not found, as a name never registered)."""
        route = self._routes.get(name)
        if route is not None:
            return route
        model = self._registry.models.serving(name)
        return Route(model.name, (model.name,), None, False)

    def set_route(self, name: str, links: list[str], canned: str | None) -> Route:
        """Validate, store and apply a route; links are stored under their models' canonical names."""
        if not name or len(name) > MAX_ROUTE_NAME or "/" in name:
            raise InvalidRequestError(f"a route name has 1 to {MAX_ROUTE_NAME} characters, no `/`")
        if not links and canned is None:
            raise InvalidRequestError("a route needs at least one link or a canned answer", param="links")
        if canned is not None and not 0 < len(canned) <= MAX_CANNED_CHARS:
            raise InvalidRequestError(f"canned has 1 to {MAX_CANNED_CHARS} characters", param="canned")
        canonical: list[str] = []
        for link in links:
            try:
                model = self._registry.models.resolve(link)
            except ModelNotFoundError as error:
                raise InvalidRequestError(
                    f"link `{link}` is not a registered model", param="links"
                ) from error
            if model.name in canonical:
                raise InvalidRequestError(f"link `{model.name}` appears twice", param="links")
            canonical.append(model.name)
        stored = self._registry.routes.put(name, tuple(canonical), canned)
        route = Route(stored.name, stored.links, stored.canned, True)
        self._routes[name] = route
        return route

    def breaker(self, model: str) -> CircuitBreaker:
        """The circuit breaker of one link, created closed on first use."""
        found = self._breakers.get(model)
        if found is None:
            found = CircuitBreaker(self._fallback.failure_threshold, self._fallback.cooldown_s, self._clock)
            self._breakers[model] = found
        return found

    def breaker_states(self) -> dict[str, BreakerState]:
        """The state of every breaker used so far."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def opened(self, model: str) -> asyncio.Event:
        """Set when the link's circuit next opens: requests waiting on the link give up and fail over."""
        return self._opened.setdefault(model, asyncio.Event())

    def link_failed(self, model: str) -> None:
        """Count a failure that is the link's fault."""
        self._watch(model, self.breaker(model).record_failure)

    def probe_done(self, model: str, ok: bool, detail: str) -> None:
        """Record a deep probe's outcome: a failure opens the circuit, a pass closes it."""
        self.probes[model] = ProbeResult(ok, detail, time.time())
        breaker = self.breaker(model)
        if ok:
            breaker.probe_passed()
        else:
            self._watch(model, breaker.probe_failed)

    def _watch(self, model: str, change: Callable[[], None]) -> None:
        breaker = self.breaker(model)
        before = breaker.opened_count
        change()
        if breaker.opened_count != before:
            self._opened.pop(model, asyncio.Event()).set()
