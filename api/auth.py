"""Bearer-key authentication on every route but liveness, and the admin-only guard."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from api.state import GatewayState
from appliance.errors import AuthenticationError, PermissionDeniedError
from appliance.registry.keys import KeyInfo, Role

PUBLIC_PATHS = ["^/health/live$"]


def gateway_state(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayState:
    """The running gateway's state, stored on the app at start."""
    state: GatewayState = connection.app.state.gateway
    return state


def _request_line(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Method and path: what the audit log names as the target (capped there; it is the client's text)."""
    return f"{connection.scope.get('method', '')} {connection.url.path}"


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The peer's address as the socket says (never a forwarded header, which the client writes itself)."""
    client = connection.client
    return client.host if client is not None else ""


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer KEY'."
        )
    return token.strip()


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves `Authorization: Bearer KEY` to the key's info; failures are audited, summed up per client
    address and reason (a flood writes a bounded number of rows), and never wait on the database."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Return the key as the user, or raise AuthenticationError (401)."""
        registry = gateway_state(connection).registry
        try:
            key = registry.keys.authenticate(_presented_key(connection))
        except AuthenticationError as error:
            registry.audit.record_denial(
                "auth.failed",
                client=client_address(connection),
                target=_request_line(connection),
                reason=error.message,
            )
            raise
        return AuthenticationResult(user=key, auth=None)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard for admin routes: a user key gets 403, and the attempt is audited (summed up like failures)."""
    key: KeyInfo = connection.user
    if key.role is not Role.ADMIN:
        gateway_state(connection).registry.audit.record_denial(
            "auth.forbidden",
            client=client_address(connection),
            target=_request_line(connection),
            reason="admin role required",
            actor_key_id=key.id,
        )
        raise PermissionDeniedError("This route needs an admin key.")
