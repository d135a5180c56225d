"""Every response gets a request id and is counted in the metrics; in-flight requests are gauged."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import GatewayMetrics

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
KNOWN_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/tokenize",
    "/detokenize",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/admin",
)
SUBSCRIPTIONS = ("/admin/events",)
"""Streams a client holds open for as long as it runs (the console's event stream): not requests in
flight, which the overview would otherwise show as one busy request for every console open."""


def route_label(path: str) -> str:
    """A bounded label for a path, so unknown paths cannot blow up the metric's cardinality."""
    for route in KNOWN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_REQUEST_ID.match(text) else None
    return None


def request_id_and_count_hook(metrics: GatewayMetrics) -> Callable[[Message, Scope], Awaitable[None]]:
    """A `before_send` hook: it sees every response the app sends, error responses made outside the
    middleware stack (401 from authentication, 404 from routing) included."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id
        model = scope.get("state", {}).get("model", "")
        metrics.requests.labels(route_label(scope["path"]), str(message["status"]), model).inc()

    return before_send


def in_flight_middleware(metrics: GatewayMetrics) -> type:
    """Build the middleware class that keeps the in-flight gauge, around the app's metrics."""

    class InFlightMiddleware:
        """Counts a request as in flight from the moment it is routed until its response ends."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or scope["path"] in SUBSCRIPTIONS:
                await self.app(scope, receive, send)
                return
            in_flight = metrics.in_flight.labels(route_label(scope["path"]))
            in_flight.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                in_flight.dec()

    return InFlightMiddleware
