"""The choices of one request: each choice's text turned into deltas (content or tool calls), what a
non-streamed answer collects of it, and the n generations of a request read as one stream of events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from appliance.engines.llamacpp.core import Finished, Piece, TokenLogprob
from appliance.engines.llamacpp.tools.stream import ArgumentsDelta, CallStart, ContentDelta
from appliance.errors import EngineError

Delta = ContentDelta | CallStart | ArgumentsDelta
Event = str | Piece | Finished


class Decoder(Protocol):
    """Turns one choice's generated text into deltas; a tool-call parser or plain text."""

    def feed(self, text: str) -> list[Delta]:
        """The deltas that can be sent now for `text`."""
        ...

    def finish(self) -> list[Delta]:
        """What was still held back, at the end of the generation."""
        ...


class PlainText:
    """A request without tools: every piece of text is content, at once."""

    def feed(self, text: str) -> list[Delta]:
        """`text` as one content delta."""
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[Delta]:
        """Nothing is ever held back."""
        return []


def split_event(event: str | Piece) -> tuple[str, tuple[TokenLogprob, ...]]:
    """A text event's text and the log probabilities of its tokens (none unless they were asked for)."""
    if isinstance(event, Piece):
        return event.text, event.logprobs
    return event, ()


@dataclass
class CollectedCall:
    """One tool call of a non-streamed choice, as its deltas built it."""

    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class ChoiceResult:
    """Everything one choice produced, for a non-streamed answer."""

    index: int
    content: list[str] = field(default_factory=list)
    calls: list[CollectedCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    end: Finished | None = None

    def add(self, deltas: list[Delta]) -> None:
        """Take in a choice's deltas."""
        for delta in deltas:
            if isinstance(delta, ContentDelta):
                self.content.append(delta.text)
            elif isinstance(delta, CallStart):
                self.calls.append(CollectedCall(delta.id, delta.name))
            else:
                self.calls[delta.index].arguments.append(delta.fragment)

    @property
    def finish_reason(self) -> str:
        """`tool_calls` when the model stopped after calling tools, else the generation's own reason."""
        reason = self.end.finish_reason if self.end is not None else "stop"
        return "tool_calls" if self.calls and reason == "stop" else reason


def finish_reason(reason: str, called: bool) -> str:
    """A streamed choice's finish_reason: `tool_calls` when it ended normally after calling tools."""
    return "tool_calls" if called and reason == "stop" else reason


async def merged(streams: list[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """The events of every choice as they come, each with its choice's index; closing this closes all
    (which cancels their generations). One choice is read directly, with no task per event."""
    if len(streams) == 1:
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await _close(streams[0])
        return
    pending = {asyncio.ensure_future(anext(stream)): index for index, stream in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                index = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                yield index, event
                if not isinstance(event, Finished):
                    pending[asyncio.ensure_future(anext(streams[index]))] = index
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await _close(stream)


async def _close(stream: AsyncIterator[Event]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def collect(streams: list[AsyncIterator[Event]], decoders: list[Decoder]) -> list[ChoiceResult]:
    """Drain every choice into its content, tool calls, log probabilities and end."""
    results = [ChoiceResult(index) for index in range(len(streams))]
    async for index, event in merged(streams):
        result = results[index]
        if isinstance(event, Finished):
            result.add(decoders[index].finish())
            result.end = event
            continue
        text, entries = split_event(event)
        result.logprobs.extend(entries)
        result.add(decoders[index].feed(text))
    if any(result.end is None for result in results):
        raise EngineError("the generation ended without finishing")
    return results
