"""The one place where errors become OpenAI-shaped JSON responses with the right status."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from appliance.errors import ApplianceError, appliance_error_body, error_body

log = logging.getLogger(__name__)

_TYPES_BY_STATUS = {401: "invalid_request_error", 403: "invalid_request_error", 429: "rate_limit_exceeded"}
_CODES_BY_STATUS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def appliance_error_response(_request: Request[Any, Any, Any], error: ApplianceError) -> Response[Any]:
    """An ApplianceError as its own status and body, with Retry-After where the error has one."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return Response(appliance_error_body(error), status_code=error.status_code, headers=headers)


def http_error_response(_request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    """Litestar's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    status = error.status_code
    error_type = _TYPES_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = error_body(str(error.detail), error_type, code=_CODES_BY_STATUS.get(status))
    return Response(body, status_code=status, headers=error.headers)


def unexpected_error_response(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """A bug: logged with its traceback, answered as a plain 500 that leaks no internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    body = error_body("The server had an error while processing your request.", "server_error")
    return Response(body, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApplianceError: appliance_error_response,
    HTTPException: http_error_response,
    Exception: unexpected_error_response,
}
