"""POST /v1/embeddings."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency

from api.limits import RequestLimits, json_body
from api.openai.proxy import encode_for_worker, forward
from api.state import GatewayState
from appliance.protocol import EmbeddingRequest, decode_request


@post("/v1/embeddings", status_code=200)
async def create_embeddings(
    request: Request[Any, Any, Any],
    gateway: NamedDependency[GatewayState],
    limits: NamedDependency[RequestLimits],
) -> Response[bytes]:
    """Validate the request, resolve the model, and let its worker embed the input."""
    raw = await json_body(request)
    body = limits.admit_request(request, len(raw), decode_request(raw, EmbeddingRequest))
    model, payload = encode_for_worker(gateway, body)
    return await limits.within_deadline(
        request.user, forward(request, gateway, model, "/v1/embeddings", payload)
    )
