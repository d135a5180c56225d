"""OpenAI response bodies and SSE streams for chat and text completions, built from core events."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from appliance.engines.llamacpp.choices import (
    ChoiceResult,
    Decoder,
    Delta,
    Event,
    merged,
    split_event,
)
from appliance.engines.llamacpp.choices import finish_reason as stream_finish_reason
from appliance.engines.llamacpp.core import Finished, TokenLogprob
from appliance.engines.llamacpp.logprob_shapes import chat_logprobs, completion_logprobs
from appliance.engines.llamacpp.tools.stream import CallStart, ContentDelta
from appliance.errors import ApplianceError, EngineError, appliance_error_body
from appliance.protocol import Usage, usage

log = logging.getLogger(__name__)

USAGE_COMMENT = b": usage "
"""Every stream ends with this SSE comment carrying the usage; the gateway reads it for metrics, drops it."""

_encode = msgspec.json.encode


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + _encode(payload) + b"\n\n"


def total_usage(ends: list[Finished]) -> Usage:
    """The usage of all choices: the prompt counted once (it was evaluated once), every choice's tokens."""
    first = ends[0]
    return usage(first.prompt_tokens, sum(end.completion_tokens for end in ends), first.cached_tokens)


def _delta_body(delta: Delta) -> dict[str, Any]:
    if isinstance(delta, ContentDelta):
        return {"content": delta.text}
    if isinstance(delta, CallStart):
        call = {"name": delta.name, "arguments": ""}
        return {"tool_calls": [{"index": delta.index, "id": delta.id, "type": "function", "function": call}]}
    return {"tool_calls": [{"index": delta.index, "function": {"arguments": delta.fragment}}]}


class CompletionShape:
    """The ids, names and per-kind bodies of one response; `chat` picks chat or legacy completion shapes."""

    def __init__(self, model: str, *, chat: bool, logprobs: bool = False, tools: bool = False) -> None:
        self.model = model
        self.chat = chat
        self.logprobs = logprobs
        """Whether choices carry log probabilities (else `logprobs` is null)."""
        self.tools = tools
        """Whether the model was offered tools: a streamed first chunk then says content null."""
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def envelope(self, choices: list[dict[str, Any]], *, chunk: bool, **extra: Any) -> dict[str, Any]:
        """A response (or, with `chunk`, a streamed chunk) around `choices`."""
        kind = "text_completion"
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """One streamed chunk around `choices`."""
        return self.envelope(choices, chunk=True, **extra)

    def _choice_logprobs(self, entries: tuple[TokenLogprob, ...], offset: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return chat_logprobs(entries) if self.chat else completion_logprobs(entries, offset)

    def choice(self, result: ChoiceResult) -> dict[str, Any]:
        """One choice of the non-streamed response."""
        text = "".join(result.content)
        entries = tuple(result.logprobs)
        if not self.chat:
            return {
                "text": text,
                "index": result.index,
                "logprobs": self._choice_logprobs(entries, 0),
                "finish_reason": result.finish_reason,
            }
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not result.calls else None,
            "refusal": None,
        }
        if result.calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for call in result.calls
            ]
        return {
            "index": result.index,
            "message": message,
            "logprobs": self._choice_logprobs(entries, 0),
            "finish_reason": result.finish_reason,
        }

    def full(self, results: list[ChoiceResult]) -> dict[str, Any]:
        """The non-streamed response."""
        ends = [result.end for result in results if result.end is not None]
        choices = [self.choice(result) for result in results]
        return self.envelope(choices, chunk=False, usage=total_usage(ends))

    def text_answer(self, text: str, end: Finished) -> dict[str, Any]:
        """The non-streamed response of one plain text choice (the canned answer)."""
        result = ChoiceResult(0, content=[text], end=end)
        return self.full([result])

    def content_event(self, index: int, **extra: Any) -> Callable[[str], bytes]:
        """A fast maker of the SSE event for one text piece of choice `index`: the chunk is encoded once
        around a marker, and each piece is spliced in, so the token loop encodes a string, not a chunk."""
        marker = "\x00piece\x00"
        encoded = sse(self.chunk([self.delta(index, marker, None)], **extra))
        before, after = encoded.split(_encode(marker))
        return lambda text: before + _encode(text) + after

    def delta(
        self, index: int, text: str | None, finish_reason: str | None, *, first: bool = False
    ) -> dict[str, Any]:
        """The choice of one chunk: a content delta for chat, a text piece for completions."""
        if not self.chat:
            return {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def first_delta(self, index: int) -> dict[str, Any]:
        """A chat choice's first chunk: the role (and content null when the answer may be tool calls)."""
        choice = self.delta(index, None if self.tools else "", None, first=True)
        if self.tools:
            choice["delta"]["content"] = None
        return choice

    def rich_delta(
        self, index: int, delta: Delta | None, entries: tuple[TokenLogprob, ...], offset: int
    ) -> dict[str, Any]:
        """A chunk's choice carrying a tool-call delta and/or log probabilities."""
        logprobs = self._choice_logprobs(entries, offset) if entries else None
        if not self.chat:
            text = delta.text if isinstance(delta, ContentDelta) else ""
            return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": None}
        body = _delta_body(delta) if delta is not None else {}
        return {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": None}


class _StreamedChoice:
    """What a stream remembers of one choice: started, called a tool, text offset, its end."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.started = False
        self.called = False
        self.offset = 0
        self.end: Finished | None = None


async def stream_events(
    shape: CompletionShape,
    streams: list[AsyncIterator[Event]],
    decoders: list[Decoder],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE stream of a request's choices, in OpenAI's chunk shapes, ending with `data: [DONE]`."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    plain: dict[int, Callable[[str], bytes]] = {}
    choices = [_StreamedChoice(decoder) for decoder in decoders]
    try:
        async for index, event in merged(streams):
            choice = choices[index]
            if not choice.started and shape.chat:
                # The role goes out with the first token, not before it, so time-to-first-chunk is TTFT.
                yield sse(shape.chunk([shape.first_delta(index)], **extra))
            choice.started = True
            if isinstance(event, Finished):
                for piece in _deltas(shape, index, choice, choice.decoder.finish(), (), plain, extra):
                    yield piece
                choice.end = event
                reason = stream_finish_reason(event.finish_reason, choice.called)
                yield sse(shape.chunk([shape.delta(index, None if shape.chat else "", reason)], **extra))
                continue
            text, entries = split_event(event)
            for piece in _deltas(shape, index, choice, choice.decoder.feed(text), entries, plain, extra):
                yield piece
        ends = [choice.end for choice in choices if choice.end is not None]
        if len(ends) == len(choices):
            totals = total_usage(ends)
            if include_usage:
                yield sse(shape.chunk([], usage=totals))
            yield USAGE_COMMENT + _encode(totals) + b"\n\n"
    except ApplianceError as error:
        yield sse(appliance_error_body(error))
    except Exception as error:
        log.exception("generation failed after the stream began", exc_info=error)
        yield sse(appliance_error_body(EngineError(f"generation failed: {error}")))
    yield b"data: [DONE]\n\n"


def _deltas(
    shape: CompletionShape,
    index: int,
    choice: _StreamedChoice,
    deltas: list[Delta],
    entries: tuple[TokenLogprob, ...],
    plain: dict[int, Callable[[str], bytes]],
    extra: dict[str, Any],
) -> list[bytes]:
    """The events of one choice's deltas; plain text without log probabilities takes the spliced path."""
    events: list[bytes] = []
    if not deltas and entries:
        # Text held back (a possible tool-call marker): its tokens' log probabilities go out now.
        events.append(sse(shape.chunk([shape.rich_delta(index, None, entries, choice.offset)], **extra)))
    for position, delta in enumerate(deltas):
        mine = entries if position == 0 else ()
        if isinstance(delta, ContentDelta) and not mine:
            maker = plain.get(index)
            if maker is None:
                maker = plain[index] = shape.content_event(index, **extra)
            events.append(maker(delta.text))
        else:
            choice.called = choice.called or not isinstance(delta, ContentDelta)
            events.append(sse(shape.chunk([shape.rich_delta(index, delta, mine, choice.offset)], **extra)))
        if isinstance(delta, ContentDelta):
            choice.offset += len(delta.text)
    return events
