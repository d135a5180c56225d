"""Forwarding a validated request to the worker that serves its model, and relaying the answer."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from api.admission import settle_usage
from api.openai.failover import load_headers, serve_generation
from api.openai.relay import json_response, unavailable
from api.state import GatewayState
from appliance.protocol import EmbeddingRequest, SamplingRequest
from appliance.registry.models import ModelInfo
from appliance.supervisor import Worker
from appliance.wire.disconnect import unless_disconnected

ModelRequest = TypeVar("ModelRequest", SamplingRequest, EmbeddingRequest)


async def ready_worker(gateway: GatewayState, model: ModelInfo) -> tuple[Worker, dict[str, str]]:
    """The worker serving `model`, loaded on demand (Residency.ensure), and the headers that say how long
    the request waited for the load (none when it was loaded). The caller holds a claim on the model until
    it calls `gateway.residency.release(model.name)`; a 503 says why it cannot be loaded."""
    worker, waited_ms = await gateway.residency.ensure(model)
    return worker, load_headers(waited_ms)


def encode_for_worker(gateway: GatewayState, body: ModelRequest) -> tuple[ModelInfo, bytes]:
    """Resolve the request's model (404 if unknown or disabled) and re-encode the body naming it
    canonically."""
    model = gateway.registry.models.serving(body.model)
    return model, msgspec.json.encode(msgspec.structs.replace(body, model=model.name))


async def forward_generation(
    request: Request[Any, Any, Any], gateway: GatewayState, body: SamplingRequest, path: str
) -> Response[bytes] | Stream:
    """Send a chat or text completion along its route's chain (a plain model: its worker), streamed or not."""
    gateway.store.refuse_if_locked()
    return await serve_generation(request, gateway, body, path)


async def forward(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    model: ModelInfo,
    path: str,
    payload: bytes,
) -> Response[bytes]:
    """POST a non-streamed request to the model's worker and return its JSON as is (embeddings); a client
    that hangs up cancels it (499)."""
    request.state.model = model.name
    gateway.store.refuse_if_locked()
    worker, headers = await ready_worker(gateway, model)
    try:
        # A client that hangs up cancels the call, which closes the worker's connection: it stops too.
        upstream = await unless_disconnected(request, worker.client.post(path, content=payload))
    except httpx.HTTPError as error:
        raise unavailable(model, error) from error
    finally:
        gateway.residency.release(model.name)  # the answer is read whole: the worker is done with it
    if upstream.status_code == 200:
        found = msgspec.json.decode(upstream.content, type=dict[str, Any]).get("usage") or {}
        prompt, completion = found.get("prompt_tokens", 0), found.get("completion_tokens", 0)
        gateway.metrics.record_usage(model.name, prompt, completion)
        settle_usage(request, prompt, completion)
    return json_response(upstream, headers)
