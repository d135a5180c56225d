"""Forwarding a validated request to the worker that serves its model, and relaying the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from api.state import GatewayState
from appliance.errors import EngineUnavailableError, appliance_error_body
from appliance.protocol import EmbeddingRequest, SamplingRequest, Usage
from appliance.registry.models import ModelInfo
from appliance.supervisor import Worker, WorkerState

ModelRequest = TypeVar("ModelRequest", SamplingRequest, EmbeddingRequest)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
USAGE_COMMENT = b": usage "
"""The worker ends each stream with this SSE comment carrying usage; it is read here and not forwarded."""


def ready_worker(gateway: GatewayState, model: ModelInfo) -> Worker:
    """The worker serving `model`, or 503 if it is not running or not ready."""
    worker = gateway.supervisor.workers.get(model.name)
    if worker is None:
        raise EngineUnavailableError(
            f"The model `{model.name}` is registered but not loaded; restart serving."
        )
    if worker.state is not WorkerState.READY:
        raise EngineUnavailableError(f"The engine for `{model.name}` is {worker.state.value}; retry shortly.")
    return worker


def _unavailable(model: ModelInfo, error: httpx.HTTPError) -> EngineUnavailableError:
    return EngineUnavailableError(f"The engine for `{model.name}` did not answer ({type(error).__name__}).")


def _json_response(upstream: httpx.Response) -> Response[bytes]:
    """The worker's JSON answer as is; a Retry-After it sent (queue full, shutting down) goes along."""
    retry_after = upstream.headers.get("retry-after")
    headers = {"Retry-After": retry_after} if retry_after else None
    return Response(
        upstream.content, status_code=upstream.status_code, media_type="application/json", headers=headers
    )


def encode_for_worker(gateway: GatewayState, body: ModelRequest) -> tuple[ModelInfo, bytes]:
    """Resolve the request's model (404 if unknown) and re-encode the body naming it canonically."""
    model = gateway.registry.models.resolve(body.model)
    return model, msgspec.json.encode(msgspec.structs.replace(body, model=model.name))


async def forward_generation(
    request: Request[Any, Any, Any], gateway: GatewayState, body: SamplingRequest, path: str
) -> Response[bytes] | Stream:
    """Send a chat or text completion to its model's worker, streamed or not as the client asked."""
    model, payload = encode_for_worker(gateway, body)
    if body.stream:
        return await forward_stream(request, gateway, model, path, payload)
    return await forward(request, gateway, model, path, payload)


async def forward(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    model: ModelInfo,
    path: str,
    payload: bytes,
) -> Response[bytes]:
    """POST a non-streamed request to the model's worker and return its JSON as is."""
    request.state.model = model.name
    worker = ready_worker(gateway, model)
    try:
        upstream = await worker.client.post(path, content=payload)
    except httpx.HTTPError as error:
        raise _unavailable(model, error) from error
    if upstream.status_code == 200:
        found = msgspec.json.decode(upstream.content, type=dict[str, Any]).get("usage") or {}
        gateway.metrics.record_usage(
            model.name, found.get("prompt_tokens", 0), found.get("completion_tokens", 0)
        )
    return _json_response(upstream)


async def forward_stream(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    model: ModelInfo,
    path: str,
    payload: bytes,
) -> Response[bytes] | Stream:
    """POST a streamed request; errors before the first byte keep their status, later ones become events."""
    request.state.model = model.name
    worker = ready_worker(gateway, model)
    started = time.perf_counter()
    try:
        upstream = await worker.client.send(
            worker.client.build_request("POST", path, content=payload), stream=True
        )
    except httpx.HTTPError as error:
        raise _unavailable(model, error) from error
    if upstream.status_code != 200:
        await upstream.aread()
        await upstream.aclose()
        return _json_response(upstream)
    return Stream(
        _relay(gateway, model, upstream, started), media_type="text/event-stream", headers=SSE_HEADERS
    )


def _split_usage(events: bytes) -> tuple[bytes, bytes | None]:
    """Take the worker's usage comment out of a run of complete SSE events: (events to forward, its JSON)."""
    if events.startswith(USAGE_COMMENT):
        at = 0
    else:
        found = events.find(b"\n\n" + USAGE_COMMENT)  # a comment starts an event, never inside a data line
        if found < 0:
            return events, None
        at = found + 2
    end = events.index(b"\n\n", at)
    return events[:at] + events[end + 2 :], events[at + len(USAGE_COMMENT) : end]


async def _relay(
    gateway: GatewayState, model: ModelInfo, upstream: httpx.Response, started: float
) -> AsyncIterator[bytes]:
    """Pass the worker's events through as they arrive, whole events only, without parsing them; closing
    this (client gone) closes the worker stream, which cancels the generation there."""
    metrics = gateway.metrics
    first_token_at: float | None = None
    pending = b""
    try:
        async for chunk in upstream.aiter_raw():
            pending += chunk
            end = pending.rfind(b"\n\n")
            if end < 0:
                continue
            events, pending = pending[: end + 2], pending[end + 2 :]
            events, usage_json = _split_usage(events)
            if events:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    metrics.time_to_first_token.labels(model.name).observe(first_token_at - started)
                yield events
            if usage_json is not None:
                totals = msgspec.json.decode(usage_json, type=Usage)
                metrics.record_usage(model.name, totals.prompt_tokens, totals.completion_tokens)
                if first_token_at is not None and totals.completion_tokens > 1:
                    per_token = (time.perf_counter() - first_token_at) / (totals.completion_tokens - 1)
                    metrics.time_per_output_token.labels(model.name).observe(per_token)
    except httpx.HTTPError as error:
        body = appliance_error_body(_unavailable(model, error))
        yield b"data: " + msgspec.json.encode(body) + b"\n\ndata: [DONE]\n\n"
    finally:
        await upstream.aclose()
