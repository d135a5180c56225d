"""Per-key request limits, checked after decoding and before any engine sees the request, and the
per-request deadline that ends a request (streamed or not) and cancels its generation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from api.admission import Admission, remember
from api.ratelimit import Charge, Clock, RateLimiter
from appliance.errors import (
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    appliance_error_body,
)
from appliance.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from appliance.registry.keys import KeyInfo
from appliance.settings import LimitSettings
from appliance.wire.schema_limits import check_request_schemas

LimitedRequest = TypeVar("LimitedRequest", ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
Answer = TypeVar("Answer", Response[bytes], Response[bytes] | Stream)
CHARS_PER_TOKEN = 4
"""OpenAI's rule of thumb for tokens from characters; used only for the tokens-per-minute charge."""


def _estimated_tokens(texts: list[str | int]) -> int:
    """Token ids count as one each; text as (characters + 3) // 4."""
    ids = sum(1 for item in texts if isinstance(item, int))
    chars = sum(len(item) for item in texts if isinstance(item, str))
    return ids + (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _prompt_parts(body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> list[str | int]:
    if isinstance(body, ChatCompletionRequest):
        # The tools' schemas and the calls in the history reach the prompt too.
        parts: list[str | int] = [message.text() for message in body.messages]
        parts += [call.function.arguments for m in body.messages for call in m.tool_calls or ()]
        if body.tools:
            parts.append(msgspec.json.encode(body.tools).decode())
        return parts
    raw = body.prompt if isinstance(body, CompletionRequest) else body.input
    if isinstance(raw, str):
        return [raw]
    # Embedding input may nest token-id lists; anything else is left to the worker to refuse.
    flat: list[str | int] = []
    for item in raw:
        flat.extend(item if isinstance(item, list) else [item])
    return [item for item in flat if isinstance(item, str | int)]


def _checked_token_limit(limits: LimitSettings, body: LimitedRequest) -> tuple[LimitedRequest, int]:
    """Refuse a max_tokens over the key's limit (400); give a chat request without one the limit."""
    if isinstance(body, EmbeddingRequest):
        return body, 0
    for param in ("max_tokens", "max_completion_tokens"):
        asked = getattr(body, param, None)
        if asked is not None and asked > limits.max_tokens:
            raise InvalidRequestError(
                f"{param} is {asked}, but this key may ask for at most {limits.max_tokens} tokens.",
                param=param,
            )
    if body.token_limit is None:
        body = msgspec.structs.replace(body, max_tokens=limits.max_tokens)
    return body, body.token_limit or 0


def _embedding_inputs(raw: str | list[Any]) -> tuple[int, int]:
    """How many inputs an embedding request sends, and their characters (a token id counts as one)."""
    if isinstance(raw, str):
        return 1, len(raw)
    if raw and all(isinstance(item, int) for item in raw):
        return 1, len(raw)  # one input given as token ids
    return len(raw), _estimated_size(raw)


def _estimated_size(items: list[Any]) -> int:
    return sum(len(item) if isinstance(item, str | list) else 1 for item in items)


def _check_costly_parts(
    limits: LimitSettings, body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
) -> None:
    """Refuse (400 naming the parameter) the parts whose cost to an engine is out of proportion to their
    bytes: long stop strings (searched for after every token), JSON Schemas that become grammars, embedding
    inputs by the thousand."""
    if isinstance(body, EmbeddingRequest):
        count, chars = _embedding_inputs(body.input)
        if count > limits.max_embedding_inputs:
            raise InvalidRequestError(
                f"input has {count} items; at most {limits.max_embedding_inputs} are allowed.", param="input"
            )
        if chars > limits.max_embedding_chars:
            raise InvalidRequestError(
                f"input has {chars} characters in all; at most {limits.max_embedding_chars} are allowed.",
                param="input",
            )
        return
    for stop in body.stop_list:
        if len(stop) > limits.max_stop_chars:
            raise InvalidRequestError(
                f"A stop string has {len(stop)} characters; at most {limits.max_stop_chars} are allowed.",
                param="stop",
            )
    check_request_schemas(body, limits.schema)


async def json_body(request: Request[Any, Any, Any]) -> bytes:
    """The raw body of a JSON request; another content type is 415 (the body is never guessed at)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"Send the body as JSON with `Content-Type: application/json` (got `{media_type or 'none'}`)."
        )
    return await request.body()


class RequestLimits:
    """The gateway's limits and the per-key rate buckets, for the app's lifetime."""

    def __init__(self, settings: LimitSettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._rates = RateLimiter(clock)

    def for_key(self, key: KeyInfo) -> LimitSettings:
        """The limits of this key: its overrides by name over `[limits]`."""
        return self.settings.for_key(key.name)

    def admit(self, key: KeyInfo, body_size: int, body: LimitedRequest) -> tuple[LimitedRequest, Admission]:
        """Check size, messages and max_tokens (400/413), then take from the rate buckets (429); returns
        the request as it goes to the engine (max_tokens filled in) and what it was admitted with."""
        limits = self.for_key(key)
        if body_size > limits.max_body_bytes:
            raise RequestTooLargeError(
                f"The request body is {body_size} bytes; this key may send at most {limits.max_body_bytes}."
            )
        if isinstance(body, ChatCompletionRequest) and len(body.messages) > limits.max_messages:
            raise InvalidRequestError(
                f"The request has {len(body.messages)} messages; at most {limits.max_messages} are allowed.",
                param="messages",
            )
        choices = getattr(body, "n", None) or 1
        if choices > limits.max_choices:
            raise InvalidRequestError(
                f"n is {choices}, but this key may ask for at most {limits.max_choices} choices.", param="n"
            )
        _check_costly_parts(limits, body)
        body, completion_tokens = _checked_token_limit(limits, body)
        completion_tokens *= choices
        charge = Charge(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            tokens=_estimated_tokens(_prompt_parts(body)) + completion_tokens,
        )
        self._rates.admit(key.id, charge)
        admission = Admission(
            key.id, limits.max_prompt_tokens, limits.tokens_per_minute, charge.tokens, self._rates.correct
        )
        return body, admission

    def admit_request(
        self, request: Request[Any, Any, Any], body_size: int, body: LimitedRequest
    ) -> LimitedRequest:
        """`admit` for the request's key, keeping what the proxy needs (the prompt limit for the worker,
        the charge to correct to the real usage) on the request."""
        body, admission = self.admit(request.user, body_size, body)
        remember(request, admission)
        return body

    async def within_deadline(self, key: KeyInfo, answer: Awaitable[Answer]) -> Answer:
        """Await the engine's answer within the key's request_timeout_s; a stream gets what is left of it."""
        timeout_s = self.for_key(key).request_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                # Cancelling the call to the worker closes its connection, which cancels the generation.
                response = await answer
        except TimeoutError as error:
            raise _timed_out(timeout_s) from error
        if isinstance(response, Stream):
            response.iterator = _until_deadline(response.iterator, deadline, timeout_s)
        return response


def _timed_out(timeout_s: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"The request took longer than its limit of {timeout_s:g} s and was stopped.")


async def _until_deadline(events: object, deadline: float, timeout_s: float) -> AsyncIterator[bytes]:
    """Relay a stream until the deadline, then end it with an error event and [DONE]; closing the inner
    stream closes the worker's, which cancels its generation."""
    if not isinstance(events, AsyncIterator):
        raise TypeError("the gateway only relays async streams")
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(events)
            except StopAsyncIteration:
                return
            yield chunk
    except TimeoutError:
        body = appliance_error_body(_timed_out(timeout_s))
        yield b"data: " + msgspec.json.encode(body) + b"\n\ndata: [DONE]\n\n"
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
