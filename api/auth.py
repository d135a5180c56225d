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


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer KEY'."
        )
    return token.strip()


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves `Authorization: Bearer KEY` to the key's info; every failure is audited."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Return the key as the user, or raise AuthenticationError (401)."""
        registry = gateway_state(connection).registry
        try:
            key = registry.keys.authenticate(_presented_key(connection))
        except AuthenticationError as error:
            target = f"{connection.scope.get('method', '')} {connection.url.path}"
            registry.audit.record("auth.failed", outcome="denied", target=target, detail=error.message)
            raise
        return AuthenticationResult(user=key, auth=None)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard for admin routes: a user key gets 403, and the attempt is audited."""
    key: KeyInfo = connection.user
    if key.role is not Role.ADMIN:
        target = f"{connection.scope.get('method', '')} {connection.url.path}"
        gateway_state(connection).registry.audit.record(
            "auth.forbidden",
            outcome="denied",
            actor_key_id=key.id,
            target=target,
            detail="admin role required",
        )
        raise PermissionDeniedError("This route needs an admin key.")
