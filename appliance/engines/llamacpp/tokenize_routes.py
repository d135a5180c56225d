"""The worker's POST /tokenize and /detokenize (vLLM's shapes), with the tokenizer completions use."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency

from appliance.engines.llamacpp.chat_prompt import render_prompt
from appliance.engines.llamacpp.model import LoadedModel
from appliance.protocol import decode_request
from appliance.wire.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


def _tokens(model: LoadedModel, text: str, add_special_tokens: bool | None) -> list[int]:
    """Tokens of `text`: by default exactly as a completion of it would be tokenized."""
    if add_special_tokens is None:
        return model.tokenize(text)
    return model.native.tokenize(text, add_bos=add_special_tokens)


@post("/tokenize", status_code=200)
async def tokenize(request: Request[Any, Any, Any], model: NamedDependency[LoadedModel]) -> TokenizeResponse:
    """A prompt's tokens, or the tokens of messages rendered with the chat template (tools included)."""
    body = decode_request(await request.body(), TokenizeRequest)
    if body.messages is not None:
        text = render_prompt(model.chat_template, body.messages, body.tools)
    else:
        text = body.prompt or ""
    tokens = _tokens(model, text, body.add_special_tokens)
    strings = [model.token_text(token) for token in tokens] if body.return_token_strs else None
    return TokenizeResponse(
        count=len(tokens), max_model_len=model.context_length, tokens=tokens, token_strs=strings
    )


@post("/detokenize", status_code=200)
async def detokenize(
    request: Request[Any, Any, Any], model: NamedDependency[LoadedModel]
) -> DetokenizeResponse:
    """The text the tokens stand for (special tokens as their text)."""
    body = decode_request(await request.body(), DetokenizeRequest)
    model.check_tokens(body.tokens, "tokens")
    return DetokenizeResponse(prompt=model.detokenize(body.tokens))
