"""POST /v1/responses: answered as a chat completion, so it takes the same workers, fallback chain, limits,
audit and metrics, then given back in the Responses API's shapes."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.response import Stream

from api.limits import RequestLimits, json_body
from api.openai.proxy import forward_generation
from api.openai.responses.stream import response_stream
from api.openai.responses.translate import chat_request, new_id, response_from_chat
from api.state import GatewayState
from appliance.errors import InvalidRequestError
from appliance.protocol import ChatCompletionRequest, decode_request
from appliance.wire.responses import ResponsesRequest

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text",
}
"""The chat request's parameters by their Responses names, so a 400 from the chat checks names what the
client sent."""


def _chat_body(
    request: Request[Any, Any, Any], limits: RequestLimits, asked: ResponsesRequest, size: int
) -> ChatCompletionRequest:
    """The admitted chat completion request that answers `asked` (400, 413, 429 as for chat)."""
    most = limits.for_key(request.user).max_tokens
    if asked.max_output_tokens is not None and asked.max_output_tokens > most:
        raise InvalidRequestError(
            f"max_output_tokens is {asked.max_output_tokens}, but this key may ask for at most {most}.",
            param="max_output_tokens",
        )
    try:
        body = decode_request(msgspec.json.encode(chat_request(asked)), ChatCompletionRequest)
        return limits.admit_request(request, size, body)
    except InvalidRequestError as error:
        error.param = RESPONSES_PARAMS.get(error.param or "", error.param)
        raise


@post("/v1/responses", status_code=200)
async def create_response(
    request: Request[Any, Any, Any],
    gateway: NamedDependency[GatewayState],
    limits: NamedDependency[RequestLimits],
) -> Response[bytes] | Stream:
    """Validate the request, answer it as a chat completion (streamed or not), return it as a response."""
    raw = await json_body(request)
    asked = decode_request(raw, ResponsesRequest)
    body = _chat_body(request, limits, asked, len(raw))
    answer = await limits.within_deadline(request.user, forward_generation(request, gateway, body, CHAT_PATH))
    response_id, created_at = new_id("resp"), int(time.time())
    if isinstance(answer, Stream):
        answer.iterator = response_stream(
            asked, answer.iterator, response_id=response_id, created_at=created_at
        )
        return answer
    if answer.status_code != 200:
        return answer  # the engine's or the gateway's error, already in OpenAI's error shape
    chat = msgspec.json.decode(answer.content, type=dict[str, Any])
    translated = response_from_chat(asked, chat, response_id=response_id, created_at=created_at)
    return Response(
        msgspec.json.encode(translated),
        status_code=200,
        media_type="application/json",
        headers=answer.headers,
    )
