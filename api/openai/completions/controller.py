"""POST /v1/completions."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.response import Stream

from api.limits import RequestLimits, json_body
from api.openai.proxy import forward_generation
from api.state import GatewayState
from appliance.protocol import CompletionRequest, decode_request


@post("/v1/completions", status_code=200)
async def create_completion(
    request: Request[Any, Any, Any],
    gateway: NamedDependency[GatewayState],
    limits: NamedDependency[RequestLimits],
) -> Response[bytes] | Stream:
    """Validate the request, resolve the model, and let its worker answer (streamed or not)."""
    raw = await json_body(request)
    body = limits.admit_request(request, len(raw), decode_request(raw, CompletionRequest))
    return await limits.within_deadline(
        request.user, forward_generation(request, gateway, body, "/v1/completions")
    )
