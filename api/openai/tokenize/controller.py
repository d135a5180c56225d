"""POST /tokenize and POST /detokenize: the model's own tokenizer, through the worker that serves it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency

from api.limits import json_body
from api.openai.failover import SERVED_MODEL
from api.openai.proxy import forward
from api.state import GatewayState
from appliance.protocol import decode_request
from appliance.registry.models import ModelInfo
from appliance.wire.tokenize import DetokenizeRequest, TokenizeRequest


def _serving_model(gateway: GatewayState, name: str) -> ModelInfo:
    """The model that would answer `name` now: a route's first link whose engine is loaded (its tokenizer
    is the one a completion would use), else its first link, which the request loads."""
    route = gateway.chains.resolve(name)
    enabled = {model.name: model for model in gateway.registry.models.enabled()}
    models = [enabled[link] for link in route.links if link in enabled]
    if not models:  # no link serves (disabled or removed): the first one's 404
        return gateway.registry.models.serving(route.links[0])
    for model in models:
        if gateway.residency.loaded(model.name):
            return model
    return models[0]  # cold: the request loads it (or says why it cannot)


async def _forward(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    body: TokenizeRequest | DetokenizeRequest,
    path: str,
) -> Response[bytes]:
    model = _serving_model(gateway, body.model)
    payload = msgspec.json.encode(msgspec.structs.replace(body, model=model.name))
    answer = await forward(request, gateway, model, path, payload)
    answer.headers[SERVED_MODEL] = model.name
    return answer


@post("/tokenize", status_code=200)
async def tokenize(
    request: Request[Any, Any, Any], gateway: NamedDependency[GatewayState]
) -> Response[bytes]:
    """Tokens of a prompt, or of messages rendered with the model's chat template (tools included)."""
    body = decode_request(await json_body(request), TokenizeRequest)
    return await _forward(request, gateway, body, "/tokenize")


@post("/detokenize", status_code=200)
async def detokenize(
    request: Request[Any, Any, Any], gateway: NamedDependency[GatewayState]
) -> Response[bytes]:
    """The text of token ids."""
    body = decode_request(await json_body(request), DetokenizeRequest)
    return await _forward(request, gateway, body, "/detokenize")
