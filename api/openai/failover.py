"""Failover along a route's chain: which link serves a generation, and what happens when one fails.

The rules (docs: README "Fallback chain"):
- a link whose model is disabled or removed (`not_serving`), can never be loaded here (`not_loaded`), whose
  circuit is open, whose engine is restarting (`not_ready`), or (for chat) whose model has no chat template,
  or a vLLM link without a tool parser for a request that lets the model choose a tool, is skipped;
- a connection error, a worker crash, a timeout before the first streamed event (while the engine does not
  decode: queued behind others it waits, up to the request timeout), a 5xx or a 429 → the
  next link (a 429 is overload, not illness: it does not count against the link's breaker);
- any other 4xx is the request's own fault → returned as is, no failover, never counted against the link;
- a stream whose first event is an error: the request's own (`invalid_request_error`) → that error as a 400,
  no failover, not counted; overload → the next link, not counted; anything else → the next link, counted;
- once an event has been streamed to the client, an error becomes an error event on that stream;
- a cold link is loaded and waited for (`[residency] load_timeout_s`), unless the route says `prefer_warm`
  and a later link is loaded: then it is skipped (`cold`); a load that fails or finds no room → the next
  link (`load_failed`, `no_room`);
- every link failed → the route's canned answer, or 503 with Retry-After when it has none.
A plain model name is a chain of one link: its engine's own answer (a 429 say) comes back as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from api.admission import settle_usage, worker_headers
from api.openai.relay import json_response, relay
from api.state import GatewayState
from appliance.chain import Route
from appliance.engines.canned import CANNED_MODEL, canned_body, canned_events
from appliance.errors import ApplianceError, EngineUnavailableError, ModelNotFoundError
from appliance.planner import ModelPlan
from appliance.probe import worker_decode_steps
from appliance.protocol import ChatCompletionRequest, SamplingRequest
from appliance.registry.models import ModelInfo
from appliance.serving.residency_rules import LOAD_MS_HEADER, ModelLoadError, NoRoomError
from appliance.supervisor import Worker, WorkerState
from appliance.wire.sse import SSE_HEADERS

log = logging.getLogger(__name__)

SERVED_MODEL = "X-Served-Model"
SERVED_VERSION = "X-Served-Model-Version"
"""The version of the model that answered: during a blue-green switch, old and new both answer."""
SKIPPED = "X-Fallback-Skipped"
"""How many links were skipped before the one that answered."""
SKIP_REASONS = "X-Fallback-Skipped-Reasons"
"""Which links were skipped and why, `model=reason` comma-separated (absent when none was)."""
CANNED = "X-Canned-Answer"
_ERROR_EVENT = b'data: {"error"'
REQUEST_ERROR = "invalid_request_error"
"""The OpenAI error type of a request's own mistakes (400, 404, 413 …): never an engine failure."""
OVERLOAD_ERROR = "rate_limit_exceeded"
"""The error type of a full queue: overload, not illness (it does not count against the breaker)."""
T = TypeVar("T")
_REFUSAL_REASONS: dict[type[ApplianceError], str] = {ModelLoadError: "load_failed", NoRoomError: "no_room"}
"""The skip reason for a link whose model residency refused to make ready (else `not_loaded`)."""


class LinkFailed(Exception):
    """One link could not serve the request; the chain moves on."""

    def __init__(
        self,
        reason: str,
        *,
        counts: bool,
        response: Response[bytes] | None = None,
        error: ApplianceError | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counts = counts
        """Whether the failure is the link's fault and so counts against its breaker."""
        self.response = response
        """The engine's own error answer, if it gave one."""
        self.error = error
        """Why its model could not be loaded: a plain model name answers exactly this."""


@dataclass(frozen=True)
class _Call:
    request: Request[Any, Any, Any]
    gateway: GatewayState
    model: ModelInfo
    path: str
    payload: bytes
    headers: dict[str, str]
    worker: Worker
    """Taken when the link is tried: a model withdrawn meanwhile still answers what it was sent."""
    release: Callable[[], None]
    """Gives back the claim on the model (once): when a plain answer is read, or a stream ends."""


async def serve_generation(
    request: Request[Any, Any, Any], gateway: GatewayState, body: SamplingRequest, path: str
) -> Response[bytes] | Stream:
    """Serve a chat or text completion from the first link of its route that can, streamed or not."""
    route = gateway.chains.resolve(body.model)
    request.state.model = route.name
    chat = path == "/v1/chat/completions"
    skipped: list[str] = []
    for at, name in enumerate(route.links):
        try:
            model = gateway.registry.models.serving(name)
        except ModelNotFoundError:  # a link disabled or removed while the route stays
            if not route.is_route:
                raise
            skipped.append(f"{name}=not_serving")
            gateway.metrics.fallback.failovers.labels(route.name, name, "not_serving").inc()
            continue
        warm_later = route.prefer_warm and any(map(gateway.residency.loaded, route.links[at + 1 :]))
        reason = _skip_reason(gateway, model, body, warm_later) if route.is_route else None
        if reason is None:
            try:
                return await _try_link(request, gateway, body, path, model, skipped)
            except LinkFailed as failed:
                if not route.is_route:
                    if failed.error is not None:
                        raise failed.error from failed
                    if failed.response is not None:
                        return failed.response
                    raise EngineUnavailableError(
                        f"The engine for `{model.name}` did not answer ({failed.reason})."
                    ) from failed
                reason = failed.reason
        skipped.append(f"{model.name}={reason}")
        gateway.metrics.fallback.failovers.labels(route.name, model.name, reason).inc()
        log.warning("route %s: link %s skipped (%s)", route.name, model.name, reason)
    return _exhausted(request, gateway, body, route, skipped, chat)


def skip_headers(skipped: list[str]) -> dict[str, str]:
    """The count of skipped links and, when there were any, which and why."""
    headers = {SKIPPED: str(len(skipped))}
    if skipped:
        headers[SKIP_REASONS] = ", ".join(skipped)
    return headers


def _skip_reason(
    gateway: GatewayState, model: ModelInfo, body: SamplingRequest, warm_later: bool
) -> str | None:
    """Why a link must not even be tried, or None (a cold link is tried: it loads, unless `warm_later`)."""
    worker = gateway.supervisor.workers.get(model.name)
    if worker is not None and worker.state is not WorkerState.READY and worker.restarts:
        return "not_ready"  # it served and died: restarting, the next link answers meanwhile
    if not gateway.residency.servable(model.name):
        return "not_loaded"
    if not gateway.residency.loaded(model.name) and warm_later:
        return "cold"
    chat = isinstance(body, ChatCompletionRequest)
    if chat and not (model.has_chat_template or model.chat_template_override is not None):
        # A base model without a template would answer 400, which is no fault of the request: skip it.
        return "no_chat_template"
    plan = gateway.residency.plan(model.name)
    if plan is not None and (reason := feature_skip_reason(plan, body)) is not None:
        return reason
    if not gateway.chains.breaker(model.name).would_allow():
        return "circuit_open"
    return None


def feature_skip_reason(plan: ModelPlan, body: SamplingRequest) -> str | None:
    """Why a link's engine cannot serve a feature this request uses, or None."""
    lets_model_choose = (
        isinstance(body, ChatCompletionRequest) and body.wants_tools and not body.requires_tool_call
    )
    if lets_model_choose and plan.engine == "vllm" and not plan.tool_parser:
        # vLLM refuses `tool_choice: auto` without a parser; a later link that can take it is worth trying.
        return "no_tool_parser"
    return None


async def _try_link(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    body: SamplingRequest,
    path: str,
    model: ModelInfo,
    skipped: list[str],
) -> Response[bytes] | Stream:
    """One attempt on one link, its model loaded first if it is cold; LinkFailed when the next link
    should be tried."""
    try:
        worker, waited_ms = await gateway.residency.ensure(model)
    except ApplianceError as error:  # refused, failed to load, no room: no fault of a running engine
        reason = _REFUSAL_REASONS.get(type(error), "not_loaded")
        raise LinkFailed(reason, counts=False, error=error) from error
    release = _once(lambda: gateway.residency.release(model.name))
    breaker = gateway.chains.breaker(model.name)
    breaker.acquire()  # claims the half-open trial; a plain model name is tried whatever its breaker says
    payload = msgspec.json.encode(body.for_engine(model.name))
    headers = {SERVED_MODEL: model.name, **skip_headers(skipped), **load_headers(waited_ms)}
    call = _Call(request, gateway, model, path, payload, headers, worker, release)
    try:
        served = await (_stream(call) if body.stream else _plain(call))
    except LinkFailed as failed:
        release()
        if failed.counts:
            gateway.chains.link_failed(model.name)
        else:
            breaker.release()
        gateway.metrics.fallback.set_breaker(model.name, breaker.state.value)
        raise
    except BaseException:
        release()
        breaker.release()  # the client left: no verdict on the link
        raise
    if not isinstance(served, Stream):
        release()  # a plain answer is read whole; a stream gives the claim back when it ends
    request.state.model = model.name
    if served.status_code == 200:
        breaker.record_success()
    else:
        breaker.release()
    gateway.metrics.fallback.set_breaker(model.name, breaker.state.value)
    return served


def load_headers(waited_ms: float) -> dict[str, str]:
    """`X-Model-Load-Ms` for a request that waited for its model to load; nothing for a warm one."""
    return {LOAD_MS_HEADER: str(round(waited_ms))} if waited_ms > 0 else {}


def _once(work: Callable[[], None]) -> Callable[[], None]:
    """`work` to be done at most once, however many ways out call it."""
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            work()

    return call


def _failed_status(upstream: httpx.Response, headers: dict[str, str]) -> LinkFailed | None:
    """LinkFailed for a 429 or 5xx answer of the engine; None for a status to return as is."""
    if upstream.status_code == 429:
        return LinkFailed("overloaded", counts=False, response=json_response(upstream, headers))
    if upstream.status_code >= 500:
        return LinkFailed(
            f"status_{upstream.status_code}", counts=True, response=json_response(upstream, headers)
        )
    return None


async def _until_opened(call: _Call, work: Awaitable[T]) -> T:
    """Await `work` unless the link's circuit opens first (a probe or another request saw it fail): then
    LinkFailed, so that a request waiting on a hung engine moves on before any timeout of its own."""
    working = asyncio.ensure_future(work)
    opened = asyncio.ensure_future(call.gateway.chains.opened(call.model.name).wait())
    try:
        await asyncio.wait({working, opened}, return_when=asyncio.FIRST_COMPLETED)
        if not working.done():
            raise LinkFailed("circuit_opened", counts=False)
        return working.result()
    finally:
        working.cancel()
        opened.cancel()


async def _plain(call: _Call) -> Response[bytes]:
    """A non-streamed attempt; it has no first token to time, so it gives up only when the circuit opens."""
    worker = call.worker
    call.headers[SERVED_VERSION] = worker.model.version
    try:
        sent = worker.client.post(call.path, content=call.payload, headers=worker_headers(call.request))
        upstream = await _until_opened(call, sent)
    except httpx.TimeoutException as error:
        raise LinkFailed("timeout", counts=True) from error
    except httpx.HTTPError as error:
        raise LinkFailed("connection", counts=True) from error
    failed = _failed_status(upstream, call.headers)
    if failed is not None:
        raise failed
    if upstream.status_code == 200:
        found = msgspec.json.decode(upstream.content, type=dict[str, Any]).get("usage") or {}
        prompt, completion = found.get("prompt_tokens", 0), found.get("completion_tokens", 0)
        call.gateway.metrics.record_usage(call.model.name, prompt, completion)
        settle_usage(call.request, prompt, completion)
    return json_response(upstream, call.headers)


PROGRESS_CHECK_S = 10.0
"""How often a request past its first-token window checks that its engine still decodes: longer than one
decode step ever takes (a 512-token step over long sequences takes about 1.5 s on two cores)."""


async def _while_progressing(call: _Call, worker: Worker, work: Awaitable[T]) -> T:
    """Await `work`, giving up (TimeoutError) after `first_token_timeout_s` without an answer unless the
    engine decoded meanwhile: a request queued behind long prompts (a full KV pool) waits, bounded by
    `request_timeout_s`; a hung engine neither steps nor answers, and fails over as before."""
    task = asyncio.ensure_future(work)
    deadline = time.monotonic() + call.gateway.settings.limits.request_timeout_s
    try:
        await asyncio.wait({task}, timeout=call.gateway.settings.fallback.first_token_timeout_s)
        # Past the window: keep waiting only while the engine's step counter moves (read only now, so a
        # request that answers in time costs no extra round trip).
        steps = None if task.done() else await worker_decode_steps(worker)
        if not task.done() and steps is None:
            raise TimeoutError  # no step counter (vLLM), or the engine does not even answer /metrics
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_CHECK_S)
            if task.done():
                break
            now = await worker_decode_steps(worker)
            if steps is None or now is None or now <= steps or time.monotonic() >= deadline:
                raise TimeoutError
            steps = now
        return task.result()
    finally:
        task.cancel()


async def _open_stream(call: _Call) -> tuple[httpx.Response, AsyncIterator[bytes], bytes] | Response[bytes]:
    """Send the request and read up to the first whole event: (upstream, the rest, the first events), or
    the engine's non-200 answer to return as is. Closes the upstream on any way out but success."""
    worker = call.worker
    call.headers[SERVED_VERSION] = worker.model.version
    sent: list[httpx.Response] = []

    async def first_events() -> tuple[httpx.Response, AsyncIterator[bytes], bytes] | Response[bytes]:
        upstream = await worker.client.send(
            worker.client.build_request(
                "POST", call.path, content=call.payload, headers=worker_headers(call.request)
            ),
            stream=True,
        )
        sent.append(upstream)
        if upstream.status_code != 200:
            await upstream.aread()
            await upstream.aclose()
            failed = _failed_status(upstream, call.headers)
            if failed is not None:
                raise failed
            return json_response(upstream, call.headers)
        chunks = upstream.aiter_raw()
        first = b""
        while b"\n\n" not in first:
            first += await anext(chunks)
        return upstream, chunks, first

    try:
        opened = await _while_progressing(call, worker, first_events())
    except (TimeoutError, httpx.TimeoutException) as error:
        await _close(sent[0] if sent else None)
        raise LinkFailed("timeout", counts=True) from error
    except (httpx.HTTPError, StopAsyncIteration) as error:
        await _close(sent[0] if sent else None)
        raise LinkFailed("connection", counts=True) from error
    except BaseException:
        await _close(sent[0] if sent else None)  # cancelled because the circuit opened, or the client left
        raise
    if isinstance(opened, Response):
        return opened
    upstream, chunks, first = opened
    if first.startswith(_ERROR_EVENT):
        # The engine failed before any token: nothing reached the client yet. Whose fault is it?
        await _close(upstream)
        error_type = _error_type(first)
        if error_type == REQUEST_ERROR:
            # The request's own (a check that ran once the stream had begun): its 400, as the worker gives
            # for errors found before a stream begins; never a failover, never a count against the engine.
            return Response(
                first[len(b"data: ") : first.index(b"\n\n")],
                status_code=400,
                media_type="application/json",
                headers=call.headers,
            )
        if error_type == OVERLOAD_ERROR:
            raise LinkFailed("overloaded", counts=False)
        raise LinkFailed("engine_error", counts=True)
    return upstream, chunks, first


def _error_type(events: bytes) -> str | None:
    """The OpenAI error type of the error event `events` starts with, if it can be read."""
    try:
        body = msgspec.json.decode(events[len(b"data: ") : events.index(b"\n\n")], type=dict[str, Any])
    except (ValueError, msgspec.DecodeError):
        return None
    error = body.get("error")
    found = error.get("type") if isinstance(error, dict) else None
    return found if isinstance(found, str) else None


async def _stream(call: _Call) -> Response[bytes] | Stream:
    """A streamed attempt: committed to this link only once its first whole event has arrived."""
    started = time.perf_counter()
    opened = await _until_opened(call, _open_stream(call))
    if isinstance(opened, Response):
        return opened
    upstream, chunks, first = opened
    events = relay(
        call.gateway,
        call.model,
        upstream,
        chunks,
        first,
        started,
        _on_mid_stream_error(call),
        on_usage=lambda totals: settle_usage(call.request, totals.prompt_tokens, totals.completion_tokens),
        on_end=call.release,
    )
    # A stream never iterated (the client left first) runs no `finally`: its claim goes when it is dropped.
    weakref.finalize(events, call.release)
    return Stream(events, media_type="text/event-stream", headers={**SSE_HEADERS, **call.headers})


def _on_mid_stream_error(call: _Call) -> Any:
    def failed() -> None:
        log.warning("engine %s failed mid-stream; the client gets an error event", call.model.name)
        call.gateway.chains.link_failed(call.model.name)

    return failed


async def _close(upstream: httpx.Response | None) -> None:
    if upstream is not None:
        await upstream.aclose()


def _exhausted(
    request: Request[Any, Any, Any],
    gateway: GatewayState,
    body: SamplingRequest,
    route: Route,
    skipped: list[str],
    chat: bool,
) -> Response[bytes] | Stream:
    """The canned answer when the route has one (and text may answer: not for a required tool call), else
    503 with Retry-After."""
    needs_call = isinstance(body, ChatCompletionRequest) and body.requires_tool_call
    if route.canned is None or needs_call:
        gateway.metrics.fallback.exhausted.labels(route.name).inc()
        error = EngineUnavailableError(f"No engine of `{route.name}` can answer now; retry shortly.")
        error.retry_after_s = gateway.settings.fallback.retry_after_s
        raise error
    gateway.metrics.fallback.canned_answers.labels(route.name).inc()
    request.state.model = CANNED_MODEL
    headers = {SERVED_MODEL: CANNED_MODEL, **skip_headers(skipped), CANNED: "true"}
    if body.stream:
        events = canned_events(route.canned, chat=chat, include_usage=body.include_usage)
        return Stream(_iterate(events), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    return Response(canned_body(route.canned, chat=chat), media_type="application/json", headers=headers)


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event
