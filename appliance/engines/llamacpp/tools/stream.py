"""Reading tool calls out of generated text as it streams, never letting half of a call into `content`.

Text is content until the format's marker may begin (a leading `{` for the JSON formats, `<tool_call>` or
`[TOOL_CALLS]` anywhere for marked ones); from there it is held and parsed as calls at the end. A named call
(its opening already in the prompt) streams each piece of text as a fragment of its arguments.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any

from appliance.engines.llamacpp.tools.formats import ToolFormat

_ID_ALPHABET = string.ascii_letters + string.digits


def call_id() -> str:
    """A unique tool call id in OpenAI's shape."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ContentDelta:
    """Text of the answer."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its index among the choice's calls, id and function name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """A fragment of a call's arguments JSON text."""

    index: int
    fragment: str


Delta = ContentDelta | CallStart | ArgumentsDelta


def _objects(text: str) -> list[Any]:
    """Every JSON value found at the top level of `text`, in order (separators and junk between skipped)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    at = 0
    while at < len(text):
        start = min((i for i in (text.find("{", at), text.find("[", at)) if i >= 0), default=-1)
        if start < 0:
            break
        try:
            value, at = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        found.append(value)
    return found


def _calls_in(value: Any, fmt: ToolFormat) -> list[Any]:
    if isinstance(value, list):
        return [item for entry in value for item in _calls_in(entry, fmt)]
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        return _calls_in(value["tool_calls"], fmt)
    return [value] if isinstance(value, dict) and "name" in value else []


def parse_calls(text: str, fmt: ToolFormat, names: tuple[str, ...]) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of every call in `text`, or None unless it is calls to known tools only."""
    calls: list[tuple[str, str]] = []
    for value in _objects(text):
        for call in _calls_in(value, fmt):
            arguments = call.get(fmt.arguments_key, call.get("arguments", call.get("parameters", {})))
            if call.get("name") not in names or not isinstance(arguments, dict):
                return None
            calls.append((call["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


class ToolCallStream:
    """An incremental parser of one choice's text into content and tool-call deltas."""

    def __init__(self, fmt: ToolFormat, names: tuple[str, ...], *, forced_name: str | None = None) -> None:
        self._fmt = fmt
        self._names = names
        self._forced = forced_name
        self._started = False
        self._pending = ""
        """Text not released yet: a possible marker start, or (once `_in_calls`) the calls."""
        self._in_calls = False
        self._sent_content = False

    def feed(self, text: str) -> list[Delta]:
        """The deltas that can be sent for `text` now."""
        if self._forced is not None:
            deltas: list[Delta] = []
            if not self._started:
                self._started = True
                deltas.append(CallStart(0, call_id(), self._forced))
            return [*deltas, ArgumentsDelta(0, text)] if text else deltas
        self._pending += text
        if self._in_calls:
            return []
        return self._release()

    def _release(self) -> list[Delta]:
        marker = self._fmt.marker
        if not self._fmt.anywhere:
            if self._sent_content:
                released, self._pending = self._pending, ""
                return [ContentDelta(released)] if released else []
            stripped = self._pending.lstrip()
            if not stripped:
                return []  # leading whitespace: what follows decides
            if stripped.startswith(marker):
                self._in_calls = True
                return []
            self._sent_content = True
            released, self._pending = self._pending, ""
            return [ContentDelta(released)]
        found = self._pending.find(marker)
        if found >= 0:
            released, self._pending = self._pending[:found], self._pending[found:]
            self._in_calls = True
        else:
            keep = next(
                (
                    n
                    for n in range(min(len(marker) - 1, len(self._pending)), 0, -1)
                    if marker.startswith(self._pending[-n:])
                ),
                0,
            )
            released, self._pending = (
                self._pending[: len(self._pending) - keep],
                self._pending[len(self._pending) - keep :],
            )
        return [ContentDelta(released)] if released else []

    def finish(self) -> list[Delta]:
        """At the end: the calls held, or the held text as content if it was no call after all."""
        if self._forced is not None:
            return [] if self._started else [CallStart(0, call_id(), self._forced)]
        held, self._pending = self._pending, ""
        if not held:
            return []
        calls = parse_calls(held, self._fmt, self._names) if self._in_calls else None
        if calls is None:
            return [ContentDelta(held)]
        deltas: list[Delta] = []
        for index, (name, arguments) in enumerate(calls):
            deltas += [CallStart(index, call_id(), name), ArgumentsDelta(index, arguments)]
        return deltas
