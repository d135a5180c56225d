"""The Responses API onto chat completions and back, as pure functions: a Responses request becomes a chat
completion body (which then passes the chat validation, limits and fallback chain like any other), and the
chat completion that answers it becomes a `response` object."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from appliance.wire.responses import (
    FunctionCallItem,
    FunctionChoice,
    FunctionTool,
    IncompleteDetails,
    InputMessage,
    InputTokensDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    item_text,
)

Status = Literal["completed", "incomplete", "failed", "in_progress"]
INCOMPLETE_REASONS: dict[str, Literal["max_output_tokens", "content_filter"]] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
}
"""Chat finish reasons that leave a response incomplete, and the reason the Responses API gives."""


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style: `resp_…`, `msg_…`, `fc_…`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation as chat messages: instructions first as a system message, then the input items;
    function calls join the assistant message before them, as one chat assistant turn holds its calls."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for item in request.input_items():
        if isinstance(item, InputMessage):
            messages.append({"role": item.role, "content": item_text(item)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item_text(item)})
    return messages


def _chat_tool_choice(choice: str | FunctionChoice) -> Any:
    if isinstance(choice, FunctionChoice):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
    return {
        "type": "function",
        "function": {key: value for key, value in function.items() if value is not None},
    }


def _response_format(text: TextConfig) -> dict[str, Any] | None:
    found = text.format
    if isinstance(found, TextFormatJsonSchema):
        schema: dict[str, Any] = {"name": found.name, "schema": found.schema}
        if found.strict is not None:
            schema["strict"] = found.strict
        if found.description is not None:
            schema["description"] = found.description
        return {"type": "json_schema", "json_schema": schema}
    if isinstance(found, TextFormatJsonObject):
        return {"type": "json_object"}
    return None


def chat_request(request: ResponsesRequest) -> dict[str, Any]:
    """The chat completion body that answers `request`, in OpenAI's chat wire shape; a stream asks for the
    usage chunk, which the Responses stream reports in its last event."""
    body: dict[str, Any] = {"model": request.model, "messages": chat_messages(request)}
    tools = request.function_tools()
    if tools:
        body["tools"] = [_chat_tool(tool) for tool in tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    optional = {
        "parallel_tool_calls": request.parallel_tool_calls,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "response_format": _response_format(request.text) if request.text is not None else None,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def response_usage(chat_usage: dict[str, Any] | None) -> ResponseUsage:
    """A chat completion's usage in the Responses API's names (zeros when the answer had none)."""
    found = chat_usage or {}
    prompt, completion = found.get("prompt_tokens", 0), found.get("completion_tokens", 0)
    cached = (found.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=completion,
        total_tokens=found.get("total_tokens", prompt + completion),
    )


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: Status,
    output: list[OutputItem] | None = None,
    usage: ResponseUsage | None = None,
    finish_reason: str | None = None,
    error: ResponseError | None = None,
) -> ResponseObject:
    """The `response` object: output, status and usage, with the request's parameters echoed back."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        status=status,
        completed_at=int(time.time()) if status == "completed" else None,
        error=error,
        incomplete_details=IncompleteDetails(reason=reason) if status == "incomplete" and reason else None,
        model=model,
        output=output or [],
        usage=usage,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        metadata=request.metadata or {},
        parallel_tool_calls=request.parallel_tool_calls is not False,
        temperature=request.temperature,
        top_p=request.top_p,
        text=request.text or TextConfig(),
        tool_choice=request.tool_choice or "auto",
        tools=request.function_tools(),
        user=request.user,
    )


def final_status(finish_reason: str | None) -> Status:
    """`incomplete` when the chat answer stopped at its token limit (or a filter), else `completed`."""
    return "incomplete" if (finish_reason or "") in INCOMPLETE_REASONS else "completed"


def response_from_chat(
    request: ResponsesRequest, chat: dict[str, Any], *, response_id: str, created_at: int
) -> ResponseObject:
    """The `response` object of a (non-streamed) chat completion: its text as one message, its tool calls
    as function_call items after it; a message is there even when empty, so `output_text` is ""."""
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    status = final_status(finish_reason)
    item_status: Literal["completed", "incomplete"] = "incomplete" if status == "incomplete" else "completed"
    calls = message.get("tool_calls") or []
    output: list[OutputItem] = []
    text = message.get("content") or ""
    if text or not calls:
        output.append(OutputMessage(id=new_id("msg"), status=item_status, content=[OutputText(text=text)]))
    for call in calls:
        function = call.get("function") or {}
        output.append(
            FunctionCallItem(
                id=new_id("fc"),
                call_id=call.get("id") or new_id("call"),
                name=function.get("name", ""),
                arguments=function.get("arguments", ""),
                status=item_status,
            )
        )
    return response_object(
        request,
        response_id=response_id,
        created_at=created_at,
        model=chat.get("model", request.model),
        status=status,
        output=output,
        usage=response_usage(chat.get("usage")),
        finish_reason=finish_reason,
    )
