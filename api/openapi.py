"""The OpenAPI document served at /schema/openapi.json, completed with what Litestar cannot see: the OpenAI
routes decode their own bodies (so their request schemas come from the msgspec structs here), every route
may answer with an OpenAI-shaped error, and every route but liveness needs the bearer key."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin  # only the plugin holds the served (cached) document
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from appliance.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from appliance.wire.responses import ResponsesRequest
from appliance.wire.tokenize import DetokenizeRequest, TokenizeRequest

SCHEMA_PATH = "/schema"
"""The document is at /schema/openapi.json."""
PUBLIC = {"/health/live"}
READINESS = "/health/ready"
REF = "#/components/schemas/{name}"
REQUEST_BODIES: dict[str, type[msgspec.Struct]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
}
STREAMING = {"/v1/chat/completions", "/v1/completions", "/v1/responses"}
EVENT_STREAMS = {"/admin/events"}
"""Routes that answer only server-sent events (Litestar documents a `Stream` as JSON)."""
ERRORS = {
    "400": "The request is invalid (OpenAI `invalid_request_error`).",
    "401": "No key, or an unknown or revoked key.",
    "403": "The key's role may not use this route.",
    "404": "Unknown route, model or resource.",
    "405": "The route does not take this method.",
    "409": "A conflict: the name is taken, or the change is refused (an activation that failed a check).",
    "413": "The body is larger than the key's limit.",
    "415": "The body is not `application/json`.",
    "422": "The stored model failed its integrity check.",
    "429": "Rate limit or full queue; see Retry-After.",
    "503": "The engine is down or starting; see Retry-After.",
    "504": "The request ran past its time limit.",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}


def openapi_config() -> OpenAPIConfig:
    """The document as JSON only: the appliance is air-gapped, so no UI that loads scripts from a CDN."""
    return OpenAPIConfig(
        title="LLM appliance", version="1", path=SCHEMA_PATH, render_plugins=[JsonRenderPlugin()]
    )


def _error_responses() -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": REF.format(name="Error")}}}
    return {
        status: {"description": text, "content": content}
        | ({"headers": RETRY_AFTER} if status == "429" else {})
        for status, text in ERRORS.items()
    }


def _answer(path: str) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if path in STREAMING:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "description": "The engine's answer in OpenAI's format (server-sent events when streamed).",
        "content": content,
    }


def complete_document(document: dict[str, Any]) -> None:
    """Add request bodies, error responses and the bearer key to Litestar's document, in place."""
    _, components = msgspec.json.schema_components(REQUEST_BODIES.values(), ref_template=REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    schemas["Error"] = ERROR_SCHEMA
    document["components"]["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
    document["security"] = [{"key": []}]
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path in PUBLIC:
                operation["security"] = []
                continue
            if method == "post" and path in REQUEST_BODIES:
                name = REQUEST_BODIES[path].__name__
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}},
                }
                operation["responses"] = {"200": _answer(path)}
            if path in EVENT_STREAMS:
                operation["responses"]["200"] = {
                    "description": "Server-sent events, one per change, until the gateway stops.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            # Ours replace Litestar's own (its 400 has another shape than the errors the gateway sends).
            operation["responses"].update(_error_responses())
            if path == READINESS:
                operation["responses"]["503"] = {
                    "description": "Not ready: the state of each engine.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }


def document_on_startup(app: Litestar) -> None:
    """Build the document once at start and complete it; Litestar then serves this cached copy."""
    complete_document(app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
