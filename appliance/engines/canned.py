"""The canned answer: the last link of a fallback chain, answered in process with a configured text."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.engines.llamacpp.core import Finished
from appliance.engines.llamacpp.responses import CompletionShape, sse

CANNED_MODEL = "canned"
"""The `model` a canned answer names, and its X-Served-Model header."""


def canned_body(text: str, *, chat: bool) -> bytes:
    """The non-streamed response: `text` with finish_reason `stop` and zero usage."""
    shape = CompletionShape(CANNED_MODEL, chat=chat)
    return msgspec.json.encode(shape.text_answer(text, Finished("stop", 0, 0)))


def canned_events(text: str, *, chat: bool, include_usage: bool) -> list[bytes]:
    """The streamed response as SSE events: the text in one chunk, the `stop` chunk, usage if asked."""
    shape = CompletionShape(CANNED_MODEL, chat=chat)
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    events = [
        sse(shape.chunk([shape.delta(0, text, None, first=True)], **extra)),
        sse(shape.chunk([shape.delta(0, None if chat else "", "stop")], **extra)),
    ]
    if include_usage:
        events.append(
            sse(shape.chunk([], usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))
        )
    events.append(b"data: [DONE]\n\n")
    return events
