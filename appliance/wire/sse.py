"""Server-sent events as the gateway and its workers write them, and as the console reads them back.

One event is `event:`, `id:` and `data:` lines ended by a blank line; a line starting with `:` is a comment
(a keep-alive that a proxy or an idle-timeout sees as traffic, and that every SSE client ignores).
"""

from __future__ import annotations

from dataclasses import dataclass

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by a proxy in front (nginx): each event goes out as it is written."""
MEDIA_TYPE = "text/event-stream"


def sse_event(kind: str, event_id: int, data: bytes) -> bytes:
    """One named event with its id; `data` is one line of JSON (compact JSON has no newline)."""
    return b"event: %s\nid: %d\ndata: %s\n\n" % (kind.encode(), event_id, data)


def sse_comment(text: str) -> bytes:
    """A comment line: traffic that carries no event."""
    return b": %s\n\n" % text.encode()


@dataclass(frozen=True)
class SseEvent:
    """One event read back: its name (`message` when the stream gave none), id and data."""

    kind: str
    id: str
    data: str


class SseReader:
    """Turns the lines of a stream into events; comments and unknown fields are skipped, as the spec says."""

    def __init__(self) -> None:
        self._kind = ""
        self._id = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (without its line ending); the event it completes, if it is the blank line."""
        if not line:
            if not self._data:
                self._kind = ""
                return None
            event = SseEvent(self._kind or "message", self._id, "\n".join(self._data))
            self._kind, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._kind = value
        elif field == "id":
            self._id = value
        elif field == "data":
            self._data.append(value)
        return None
