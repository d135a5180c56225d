"""The worker's HTTP side: OpenAI routes over the loaded model, plus health and counters."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from litestar import Litestar, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.response import Stream

from appliance.engines.llamacpp.chat_prompt import ChatPlan, needs_grammar_thread, plan_chat
from appliance.engines.llamacpp.choices import Decoder, PlainText, collect
from appliance.engines.llamacpp.core import SamplingParams
from appliance.engines.llamacpp.model import LoadedModel
from appliance.engines.llamacpp.responses import CompletionShape, stream_events
from appliance.engines.llamacpp.sampling import grammar_for, needs_conversion
from appliance.engines.llamacpp.schema_grammar import check_parses
from appliance.engines.llamacpp.tokenize_routes import detokenize, tokenize
from appliance.errors import (
    ApplianceError,
    InvalidRequestError,
    PromptTooLongError,
    appliance_error_body,
)
from appliance.protocol import (
    PROMPT_LIMIT_HEADER,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingRequest,
    decode_request,
    usage,
)
from appliance.wire.disconnect import unless_disconnected
from appliance.wire.sse import SSE_HEADERS

MAX_THREADS = 1024


def _logit_bias(model: LoadedModel, raw: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    if not raw:
        return ()
    try:
        pairs = tuple((int(token), bias) for token, bias in raw.items())
    except ValueError as error:
        raise InvalidRequestError("logit_bias keys must be token ids", param="logit_bias") from error
    model.check_tokens([token for token, _ in pairs], "logit_bias")
    return pairs


def _logprobs(request: SamplingRequest) -> int | None:
    """How many alternatives each token's log probability comes with; None when none were asked for."""
    if isinstance(request, ChatCompletionRequest):
        return (request.top_logprobs or 0) if request.logprobs else None
    if isinstance(request, CompletionRequest):
        return request.logprobs
    return None


def _sampling(
    model: LoadedModel, request: SamplingRequest, max_tokens: int, grammar: str | None
) -> SamplingParams:
    defaults = SamplingParams(max_tokens=max_tokens)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        top_k=defaults.top_k if request.top_k is None else request.top_k,
        min_p=defaults.min_p if request.min_p is None else request.min_p,
        stop=tuple(request.stop_list),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
        logit_bias=_logit_bias(model, request.logit_bias),
        grammar=grammar,
        logprobs=_logprobs(request),
    )


def _check_prompt_limit(http: Request[Any, Any, Any], prompt_tokens: int, param: str) -> None:
    """Refuse a prompt over the key's limit, which the gateway sends in a header (it has no tokenizer)."""
    raw = http.headers.get(PROMPT_LIMIT_HEADER)
    if raw is None:
        return
    try:
        limit = int(raw)
    except ValueError as error:
        raise InvalidRequestError(f"{PROMPT_LIMIT_HEADER} must be a whole number of tokens") from error
    if 0 < limit < prompt_tokens:
        raise PromptTooLongError(
            f"Your {param} resulted in {prompt_tokens} tokens; this key may send at most {limit} prompt "
            f"tokens. Please reduce the length of the {param}.",
            param=param,
        )


async def _complete(
    http: Request[Any, Any, Any],
    model: LoadedModel,
    request: SamplingRequest,
    tokens: list[int],
    limit: int | None,
    *,
    grammar: str | None,
    decoder: Callable[[], Decoder] = PlainText,
    tools: bool = False,
) -> Response[Any] | Stream:
    chat = isinstance(request, ChatCompletionRequest)
    param = "messages" if chat else "prompt"
    _check_prompt_limit(http, len(tokens), param)
    params = _sampling(model, request, model.check_fits(tokens, limit, param=param), grammar)
    logprobs = params.logprobs is not None
    shape = CompletionShape(model.config.name, chat=chat, logprobs=logprobs, tools=tools)
    choices = request.n or 1
    streams = model.core.generate_choices(tokens, params, choices)
    decoders = [decoder() for _ in range(choices)]
    if request.stream:
        body = stream_events(shape, streams, decoders, include_usage=request.include_usage)
        return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)
    results = await unless_disconnected(http, collect(streams, decoders))
    return Response(shape.full(results))


def _checked_plan(model: LoadedModel, body: ChatCompletionRequest) -> ChatPlan:
    """The request's plan, its grammar parsed by llama.cpp once (a grammar it refuses is a 400 now)."""
    plan = plan_chat(model.chat_template, body, model.config.schema_limits)
    if plan.grammar is not None:
        check_parses(plan.grammar, model.native.vocab, plan.grammar_param)
    return plan


def _checked_grammar(model: LoadedModel, response_format: dict[str, Any] | None) -> str | None:
    """The grammar of `response_format`, parsed by llama.cpp once (a grammar it refuses is a 400 now)."""
    grammar = grammar_for(response_format, model.config.schema_limits)
    if grammar is not None:
        check_parses(grammar, model.native.vocab, "response_format")
    return grammar


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    request: Request[Any, Any, Any], model: NamedDependency[LoadedModel]
) -> Response[Any] | Stream:
    """Render the messages (and the tools offered) with the model's chat template, then generate."""
    body = decode_request(await request.body(), ChatCompletionRequest)
    if needs_grammar_thread(body):
        plan = await model.grammars.run(_checked_plan, model, body)
    else:
        plan = _checked_plan(model, body)
    return await _complete(
        request,
        model,
        body,
        model.tokenize(plan.prompt),
        body.token_limit,
        grammar=plan.grammar,
        decoder=plan.decoder,
        tools=plan.tools,
    )


def _prompt_tokens(model: LoadedModel, prompt: str | list[str | int]) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenize(prompt)
    if all(isinstance(item, int) for item in prompt) and prompt:
        tokens = [int(item) for item in prompt]
        model.check_tokens(tokens, "prompt")
        return tokens
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return model.tokenize(prompt[0])
    raise InvalidRequestError(
        "prompt must be a string, a list of one string, or a non-empty list of token ids", param="prompt"
    )


@post("/v1/completions", status_code=200)
async def completions(
    request: Request[Any, Any, Any], model: NamedDependency[LoadedModel]
) -> Response[Any] | Stream:
    """Generate from a raw prompt."""
    body = decode_request(await request.body(), CompletionRequest)
    if body.echo:
        raise InvalidRequestError("echo is not supported by this engine", param="echo")
    tokens = _prompt_tokens(model, body.prompt)
    response_format = msgspec.to_builtins(body.response_format) if body.response_format else None
    if needs_conversion(response_format):
        grammar = await model.grammars.run(_checked_grammar, model, response_format)
    else:
        grammar = _checked_grammar(model, response_format)
    return await _complete(request, model, body, tokens, body.token_limit, grammar=grammar)


def _embedding_inputs(raw: str | list[Any]) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not texts or not all(isinstance(text, str) for text in texts):
        raise InvalidRequestError("input must be a string or a non-empty list of strings", param="input")
    return texts


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any], model: NamedDependency[LoadedModel]) -> dict[str, Any]:
    """Mean-pooled, normalised embeddings of each input text."""
    body = decode_request(await request.body(), EmbeddingRequest)
    texts = _embedding_inputs(body.input)
    # Inputs are counted and checked against the context on the embedding thread, not here: by the
    # thousand they would hold the event loop. A client that hangs up stops the work at the next batch.
    vectors, tokens = await unless_disconnected(request, model.embedder.embed(texts))
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise InvalidRequestError(f"this model only gives {len(vectors[0])} dimensions", param="dimensions")
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else vector,
        }
        for index, vector in enumerate(vectors)
    ]
    return {"object": "list", "data": data, "model": model.config.name, "usage": usage(tokens, 0)}


@get("/health")
async def health(model: NamedDependency[LoadedModel]) -> dict[str, Any]:
    """Ready: the model is loaded and the routes answer."""
    return {
        "status": "ok",
        "model": model.config.name,
        "context_length": model.context_length,
        "slots": model.parallel,
        "kv_pool_tokens": model.batching.pool_tokens,
        "kv_pool_used": model.batching.pool_cells_used(),
        "kv_layout": model.batching.kv_layout,
    }


class ThreadsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /threads (the gateway's only: the worker listens on its private unix socket)."""

    threads: int


@post("/threads", status_code=200)
async def set_threads(model: NamedDependency[LoadedModel], data: ThreadsRequest) -> dict[str, Any]:
    """Change how many compute threads decode, from the next step on (blue-green hand-over)."""
    if not 1 <= data.threads <= MAX_THREADS:
        raise InvalidRequestError(f"threads must be between 1 and {MAX_THREADS}", param="threads")
    model.batching.set_threads(data.threads)
    return {"threads": data.threads}


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(model: NamedDependency[LoadedModel]) -> str:
    """The worker's own counters in Prometheus text format."""
    counters = model.core.counters
    lines = [
        f"appliance_worker_tokens_generated_total {counters.tokens_generated}",
        f"appliance_worker_generations_started_total {counters.generations_started}",
        f"appliance_worker_generations_finished_total {counters.generations_finished}",
        f"appliance_worker_generations_cancelled_total {counters.generations_cancelled}",
        f"appliance_worker_prompt_tokens_cached_total {counters.prompt_tokens_cached}",
        f"appliance_worker_decode_steps_total {counters.decode_steps}",
        f"appliance_worker_decode_failures_total {counters.decode_failures}",
        f"appliance_worker_preemptions_total {counters.preemptions}",
        f"appliance_worker_waits_for_cells_total {counters.waits_for_cells}",
        f"appliance_worker_cache_evictions_total {counters.cache_evictions}",
        f"appliance_worker_kv_pool_cells {model.batching.pool_tokens}",
        f"appliance_worker_kv_pool_cells_used {model.batching.pool_cells_used()}",
        f"appliance_worker_slots {model.parallel}",
        f"appliance_worker_embedding_inputs_total {model.embedder.inputs_embedded}",
        f"appliance_worker_embeddings_cancelled_total {model.embedder.cancelled}",
    ]
    return "\n".join(lines) + "\n"


def _error_response(_request: Request[Any, Any, Any], error: ApplianceError) -> Response[Any]:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return Response(appliance_error_body(error), status_code=error.status_code, headers=headers)


def create_worker_app(model: LoadedModel) -> Litestar:
    """The worker's ASGI app around one loaded model; the model's owner closes it, not the app."""

    async def provide_model() -> LoadedModel:
        return model

    return Litestar(
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            tokenize,
            detokenize,
            health,
            metrics,
            set_threads,
        ],
        dependencies={"model": provide_model},
        exception_handlers={ApplianceError: _error_response},
        openapi_config=None,
        request_max_body_size=None,
    )
