"""A chat completion's SSE stream as the Responses API's typed events (`event: <type>` and `data: <json>`,
numbered by `sequence_number`), built as the chat chunks arrive: a chunk may hold several events, and an
event may be split across chunks, even inside a UTF-8 character, so only whole events are read.

The chat stream's own `data: [DONE]` ends the response with `response.completed` (or `.incomplete`) and is
not forwarded; an error event of the chat stream ends it with `error` and `response.failed`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from api.openai.responses.translate import (
    final_status,
    new_id,
    response_object,
    response_usage,
)
from appliance.wire.responses import (
    FunctionCallItem,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
)

ItemStatus = Literal["in_progress", "completed", "incomplete"]
_encode = msgspec.json.encode
_DONE = b"[DONE]"
_ENDED_EARLY = "The engine's stream ended before its answer was complete."


@dataclass
class _OpenMessage:
    """The assistant message being streamed: its id, place in the output, and text so far."""

    id: str
    output_index: int
    pieces: list[str] = field(default_factory=list)

    def item(self, status: ItemStatus) -> OutputMessage:
        """The message as an output item: no content yet while in progress, its whole text after."""
        content = [] if status == "in_progress" else [OutputText(text="".join(self.pieces))]
        return OutputMessage(id=self.id, status=status, content=content)


@dataclass
class _OpenCall:
    """A function call being streamed: its ids, name, place in the output, and arguments so far."""

    id: str
    call_id: str
    name: str
    output_index: int
    pieces: list[str] = field(default_factory=list)

    def item(self, status: ItemStatus) -> FunctionCallItem:
        """The call as an output item: empty arguments while in progress (deltas follow), whole after."""
        arguments = "" if status == "in_progress" else "".join(self.pieces)
        return FunctionCallItem(
            id=self.id, call_id=self.call_id, name=self.name, arguments=arguments, status=status
        )


def _data(event: bytes) -> bytes | None:
    """The data of one SSE event (its data lines joined), or None for a comment or an event without data."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class ResponseEvents:
    """The Responses events of one response, fed the chat stream's bytes as they arrive.

    Output items follow the chat deltas: text opens a message, a tool-call delta opens a function_call
    item. A message is done when a call begins; calls are done when text follows them or the answer ends,
    so an engine that streams parallel calls interleaved (by their chat `index`) is still read right.
    """

    def __init__(self, request: ResponsesRequest, *, response_id: str, created_at: int) -> None:
        self.request = request
        self.response_id = response_id
        self.created_at = created_at
        self.model = request.model
        self.done = False
        """Whether the response has ended (completed, incomplete or failed): nothing more is read."""
        self._pending = b""
        self._sequence = 0
        self._started = False
        self._items: list[OutputItem | None] = []
        """The output by index; None while the item at that index is still open."""
        self._message: _OpenMessage | None = None
        self._calls: dict[int, _OpenCall] = {}
        """The open calls by their chat `index`."""
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The Responses events for the whole chat events that `chunk` completes (maybe none)."""
        self._pending += chunk
        out: list[bytes] = []
        while not self.done:
            end = self._pending.find(b"\n\n")
            if end < 0:
                break
            event, self._pending = self._pending[:end], self._pending[end + 2 :]
            data = _data(event)
            if data is not None:
                self._on_data(data, out)
        return b"".join(out)

    def end(self) -> bytes:
        """The last events when the chat stream stopped without `[DONE]`: complete if the answer had
        finished, else failed (the connection to the engine was lost)."""
        if self.done:
            return b""
        out: list[bytes] = []
        if self._finish_reason is None:
            self._fail(out, {"message": _ENDED_EARLY, "type": "server_error", "code": "engine_error"})
        else:
            self._complete(out)
        return b"".join(out)

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n")

    def _response(
        self, status: Literal["in_progress", "completed", "incomplete", "failed"]
    ) -> ResponseObject:
        return response_object(
            self.request,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            status=status,
        )

    def _on_data(self, data: bytes, out: list[bytes]) -> None:
        if data == _DONE:
            self._start(out, None)
            self._complete(out)
            return
        try:
            chunk = msgspec.json.decode(data, type=dict[str, Any])
        except msgspec.DecodeError:
            self._start(out, None)
            self._fail(out, {"message": "The engine sent an event that is not JSON.", "code": "engine_error"})
            return
        self._start(out, chunk.get("model"))
        if "error" in chunk:
            self._fail(out, chunk["error"])
            return
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Responses request asks for one answer; the chat request had no `n`
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._text(out, delta["content"])
            for call in delta.get("tool_calls") or ():
                self._call(out, call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _start(self, out: list[bytes], model: str | None) -> None:
        """response.created and response.in_progress, once: named after the model that answers, which
        the first chat chunk says (a route's link, or the canned answer)."""
        if self._started:
            return
        self._started = True
        self.model = model or self.model
        self._emit(out, "response.created", response=self._response("in_progress"))
        self._emit(out, "response.in_progress", response=self._response("in_progress"))

    def _open_index(self) -> int:
        self._items.append(None)
        return len(self._items) - 1

    def _open_message(self, out: list[bytes]) -> _OpenMessage:
        """The message being streamed, opened (its item and its one text part announced) if none is."""
        message = self._message
        if message is None:
            message = self._message = _OpenMessage(new_id("msg"), self._open_index())
            self._emit(
                out,
                "response.output_item.added",
                output_index=message.output_index,
                item=message.item("in_progress"),
            )
            self._emit(
                out,
                "response.content_part.added",
                item_id=message.id,
                output_index=message.output_index,
                content_index=0,
                part=OutputText(text=""),
            )
        return message

    def _text(self, out: list[bytes], text: str) -> None:
        self._close_calls(out, "completed")
        message = self._open_message(out)
        message.pieces.append(text)
        self._emit(
            out,
            "response.output_text.delta",
            item_id=message.id,
            output_index=message.output_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call(self, out: list[bytes], delta: dict[str, Any]) -> None:
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            self._close_message(out, "completed")
            call_id = delta.get("id") or new_id("call")
            call = _OpenCall(new_id("fc"), call_id, function.get("name") or "", self._open_index())
            self._calls[index] = call
            self._emit(
                out,
                "response.output_item.added",
                output_index=call.output_index,
                item=call.item("in_progress"),
            )
        elif not call.name and function.get("name"):
            call.name = function["name"]
        fragment = function.get("arguments")
        if fragment:
            call.pieces.append(fragment)
            self._emit(
                out,
                "response.function_call_arguments.delta",
                item_id=call.id,
                output_index=call.output_index,
                delta=fragment,
            )

    def _close_message(self, out: list[bytes], status: ItemStatus) -> None:
        message = self._message
        if message is None:
            return
        self._message = None
        item = message.item(status)
        part = item.content[0]
        where = {"item_id": message.id, "output_index": message.output_index, "content_index": 0}
        self._emit(out, "response.output_text.done", **where, text=part.text, logprobs=[])
        self._emit(out, "response.content_part.done", **where, part=part)
        self._emit(out, "response.output_item.done", output_index=message.output_index, item=item)
        self._items[message.output_index] = item

    def _close_calls(self, out: list[bytes], status: ItemStatus) -> None:
        for call in sorted(self._calls.values(), key=lambda open_call: open_call.output_index):
            item = call.item(status)
            self._emit(
                out,
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=call.output_index,
                arguments=item.arguments,
            )
            self._emit(out, "response.output_item.done", output_index=call.output_index, item=item)
            self._items[call.output_index] = item
        self._calls.clear()

    def _complete(self, out: list[bytes]) -> None:
        status = final_status(self._finish_reason)
        item_status: ItemStatus = "incomplete" if status == "incomplete" else "completed"
        if not self._items:
            # An empty answer still has its message, as the non-streamed answer does: output_text is "".
            self._open_message(out)
        self._close_message(out, item_status)
        self._close_calls(out, item_status)
        response = response_object(
            self.request,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            status=status,
            output=self._output(item_status),
            usage=response_usage(self._usage),
            finish_reason=self._finish_reason,
        )
        self._emit(out, f"response.{status}", response=response)
        self.done = True

    def _fail(self, out: list[bytes], error: Any) -> None:
        found = error if isinstance(error, dict) else {"message": str(error)}
        message = str(found.get("message") or "The engine failed while answering.")
        self._emit(out, "error", code=found.get("code"), message=message, param=found.get("param"))
        # The Responses API's own error codes are few: an overload is the one the client can act on.
        code: Literal["server_error", "rate_limit_exceeded"] = (
            "rate_limit_exceeded" if found.get("type") == "rate_limit_exceeded" else "server_error"
        )
        response = response_object(
            self.request,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            status="failed",
            output=self._output("incomplete"),
            usage=response_usage(self._usage) if self._usage else None,
            error=ResponseError(code=code, message=message),
        )
        self._emit(out, "response.failed", response=response)
        self.done = True

    def _output(self, open_status: ItemStatus) -> list[OutputItem]:
        """The output so far, in order, the items still open given `open_status`."""
        still_open: dict[int, OutputItem] = {
            call.output_index: call.item(open_status) for call in self._calls.values()
        }
        if self._message is not None:
            still_open[self._message.output_index] = self._message.item(open_status)
        return [item if item is not None else still_open[index] for index, item in enumerate(self._items)]


async def response_stream(
    request: ResponsesRequest, chunks: object, *, response_id: str, created_at: int
) -> AsyncIterator[bytes]:
    """The Responses events of a chat stream, relayed as they are made; closing this (client gone) closes
    the chat stream, which cancels the generation."""
    if not isinstance(chunks, AsyncIterator):
        raise TypeError("the gateway only relays async streams")
    events = ResponseEvents(request, response_id=response_id, created_at=created_at)
    try:
        async for chunk in chunks:
            made = events.feed(chunk.encode() if isinstance(chunk, str) else chunk)
            if made:
                yield made
            if events.done:
                return
        last = events.end()
        if last:
            yield last
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
