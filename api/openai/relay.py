"""Relaying a worker's answer to the client: JSON as is, SSE events whole and as they arrive."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import httpx
import msgspec
from litestar import Response

from api.drain import StreamCutError, cut_error
from api.state import GatewayState
from appliance.errors import EngineUnavailableError, appliance_error_body
from appliance.protocol import Usage
from appliance.registry.models import ModelInfo

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
USAGE_COMMENT = b": usage "
"""The worker ends each stream with this SSE comment carrying usage; it is read here and not forwarded."""


def json_response(upstream: httpx.Response, headers: dict[str, str] | None = None) -> Response[bytes]:
    """The worker's JSON answer as is, with `headers`; a Retry-After it sent (queue full) goes along."""
    sent = dict(headers or {})
    retry_after = upstream.headers.get("retry-after")
    if retry_after:
        sent["Retry-After"] = retry_after
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type="application/json",
        headers=sent or None,
    )


def unavailable(model: ModelInfo, error: httpx.HTTPError) -> EngineUnavailableError:
    """The 503 for an engine that did not answer."""
    return EngineUnavailableError(f"The engine for `{model.name}` did not answer ({type(error).__name__}).")


def split_usage(events: bytes) -> tuple[bytes, bytes | None]:
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


CONTENT = b'"content":"'
EMPTY_CONTENT = b'"content":""'


def content_events(events: bytes) -> int:
    """How many non-empty content deltas a run of events carries: about one per token, counted without
    parsing (both engines write compact JSON); the role and finish events carry none."""
    return events.count(CONTENT) - events.count(EMPTY_CONTENT)


async def relay(
    gateway: GatewayState,
    model: ModelInfo,
    upstream: httpx.Response,
    chunks: AsyncIterator[bytes],
    first: bytes,
    started: float,
    on_error: Callable[[], None] | None = None,
    on_usage: Callable[[Usage], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """Pass the worker's events through as they arrive (`first` already read), whole events only, without
    parsing them; closing this (client gone) closes the worker stream, which cancels the generation there.
    An engine failure now becomes an error event: tokens were sent, so no other link may take over; so does
    the shutdown's drain deadline, so a stream outliving it ends cleanly instead of being truncated.
    `on_end` runs once it is over, however it ended."""
    metrics = gateway.metrics
    first_token_at: float | None = None
    streamed = 0  # content events so far, in `metrics.streaming_tokens` until the usage says the truth
    counted = False
    pending = first
    try:
        while True:
            end = pending.rfind(b"\n\n")
            if end >= 0:
                events, pending = pending[: end + 2], pending[end + 2 :]
                events, usage_json = split_usage(events)
                if events:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        metrics.time_to_first_token.labels(model.name).observe(first_token_at - started)
                    if not counted:
                        tokens = content_events(events)
                        streamed += tokens
                        metrics.streaming_tokens += tokens
                    yield events
                if usage_json is not None:
                    totals = msgspec.json.decode(usage_json, type=Usage)
                    metrics.streaming_tokens -= streamed
                    streamed, counted = 0, True
                    metrics.record_usage(model.name, totals.prompt_tokens, totals.completion_tokens)
                    if on_usage is not None:
                        on_usage(totals)  # the key's token charge is corrected to the real usage
                    if first_token_at is not None and totals.completion_tokens > 1:
                        per_token = (time.perf_counter() - first_token_at) / (totals.completion_tokens - 1)
                        metrics.time_per_output_token.labels(model.name).observe(per_token)
            try:
                # Only while shutting down is the wait raced against the drain deadline: the race costs two
                # tasks per event, which the token loop of a serving gateway must not pay. (A stream that is
                # silent when the drain begins is bounded from its next event, or by uvicorn's own timeout.)
                if gateway.drain.draining:
                    pending += await gateway.drain.bounded(anext(chunks))
                else:
                    pending += await anext(chunks)
            except StopAsyncIteration:
                break
    except StreamCutError:
        body = appliance_error_body(cut_error(gateway.settings.server.drain_timeout_s))
        yield b"data: " + msgspec.json.encode(body) + b"\n\ndata: [DONE]\n\n"
    except httpx.HTTPError as error:
        if on_error is not None:
            on_error()
        body = appliance_error_body(unavailable(model, error))
        yield b"data: " + msgspec.json.encode(body) + b"\n\ndata: [DONE]\n\n"
    finally:
        if streamed:  # cut before its usage: the tokens sent are all that is known, and they were made
            metrics.streaming_tokens -= streamed
            metrics.completion_tokens.labels(model.name).inc(streamed)
        try:
            await upstream.aclose()
        finally:
            if on_end is not None:
                on_end()  # the stream is over: its model may go idle
