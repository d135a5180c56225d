"""OpenAI response bodies and SSE streams for chat and text completions, built from core events."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from appliance.engines.llamacpp.core import Finished
from appliance.errors import ApplianceError, EngineError, appliance_error_body
from appliance.protocol import usage

log = logging.getLogger(__name__)

USAGE_COMMENT = b": usage "
"""Every stream ends with this SSE comment carrying the usage; the gateway reads it for metrics, drops it."""

_encode = msgspec.json.encode


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + _encode(payload) + b"\n\n"


async def collect(events: AsyncIterator[str | Finished]) -> tuple[str, Finished]:
    """Drain a generation into its full text and its end."""
    pieces: list[str] = []
    async for event in events:
        if isinstance(event, Finished):
            return "".join(pieces), event
        pieces.append(event)
    raise EngineError("the generation ended without finishing")


class CompletionShape:
    """The ids, names and per-kind bodies of one response; `chat` picks chat or legacy completion shapes."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def full(self, text: str, end: Finished) -> dict[str, Any]:
        """The non-streamed response."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": end.finish_reason,
            }
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": end.finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [choice],
            "usage": usage(end.prompt_tokens, end.completion_tokens, end.cached_tokens),
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """One streamed chunk around `choices`."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def content_event(self, **extra: Any) -> Callable[[str], bytes]:
        """A fast maker of the SSE event for one text piece: the chunk is encoded once around a marker,
        and each piece is spliced in, so the token loop encodes a string, not a whole chunk."""
        marker = "\x00piece\x00"
        encoded = sse(self.chunk([self.delta(marker, None)], **extra))
        before, after = encoded.split(_encode(marker))
        return lambda text: before + _encode(text) + after

    def delta(self, text: str | None, finish_reason: str | None, *, first: bool = False) -> dict[str, Any]:
        """The choice of one chunk: a delta for chat, a text piece for completions."""
        if not self.chat:
            return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def stream_events(
    shape: CompletionShape,
    events: AsyncIterator[str | Finished],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE stream of a generation, in OpenAI's chunk shapes, ending with `data: [DONE]`."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    content_event = shape.content_event(**extra)
    first = True
    try:
        async for event in events:
            if first and shape.chat:
                # The role goes out with the first token, not before it, so time-to-first-chunk is TTFT.
                yield sse(shape.chunk([shape.delta("", None, first=True)], **extra))
            first = False
            if isinstance(event, Finished):
                yield sse(
                    shape.chunk([shape.delta(None if shape.chat else "", event.finish_reason)], **extra)
                )
                totals = usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
                if include_usage:
                    yield sse(shape.chunk([], usage=totals))
                yield USAGE_COMMENT + _encode(totals) + b"\n\n"
                break
            yield content_event(event)
    except ApplianceError as error:
        yield sse(appliance_error_body(error))
    except Exception as error:
        log.exception("generation failed after the stream began", exc_info=error)
        yield sse(appliance_error_body(EngineError(f"generation failed: {error}")))
    yield b"data: [DONE]\n\n"
