"""GET /v1/models and GET /v1/models/{id}: every name and alias a request may use."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency

from api.state import GatewayState
from appliance.registry.models import ModelInfo

OWNER = "appliance"


def _model_object(model_id: str, model: ModelInfo) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": model.created, "owned_by": OWNER}


@get("/v1/models")
async def list_models(gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
    """Enabled models, each under its name and each alias."""
    models = gateway.registry.models.enabled()
    return {"object": "list", "data": [_model_object(n, m) for m in models for n in m.public_names]}


@get("/v1/models/{model_id:str}")
async def retrieve_model(model_id: str, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
    """One enabled model by name or alias; an unknown (or disabled) id is 404 model_not_found."""
    return _model_object(model_id, gateway.registry.models.serving(model_id))
