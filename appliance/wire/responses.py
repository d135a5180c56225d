"""POST /v1/responses, stateless: OpenAI's Responses API request and the `response` object, as msgspec
structs in OpenAI's snake_case. The gateway answers it by translating onto a chat completion."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequestError
from appliance.protocol import ModelName, Probability, Temperature, TokenCount
from appliance.wire.tools import FunctionName

TEXT_PARTS = frozenset({"input_text", "output_text"})
"""Content part types that carry text: an answer's own output goes back in as input in a later turn."""
MEDIA_PARTS = frozenset({"input_image", "input_file", "input_audio"})
"""Content part types that carry media: refused, never dropped, since the models served read text only."""
SchemaName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
_AT_PATH = " - at `$"


def _invalid(reason: str, where: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid request: {reason} at `{where}`", param=param)


def _converted(raw: dict[str, Any], kind: type[msgspec.Struct], where: str, param: str) -> Any:
    """`raw` as a `kind`, or a 400 naming the place in the request (`input[2].content`, say)."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as error:
        reason, _, path = str(error).partition(_AT_PATH)
        raise _invalid(reason, where + path.rstrip("`"), param) from error


class InputPart(msgspec.Struct, kw_only=True):
    """One content part of an input item; only text parts are read. Other keys (an output part's
    annotations, say) are let through: a client sends an earlier answer's output back as input."""

    type: str
    text: str | None = None


def _part_texts(parts: str | list[InputPart], where: str) -> str:
    """The text of a content string or of its text parts joined; media or unknown parts are a 400."""
    if isinstance(parts, str):
        return parts
    for position, part in enumerate(parts):
        if part.type in MEDIA_PARTS:
            raise InvalidRequestError(
                f"{where}[{position}] is an `{part.type}` part, but this model reads text only; "
                "send the content as text.",
                param="input",
            )
        if part.type not in TEXT_PARTS:
            raise InvalidRequestError(
                f"{where}[{position}] has a content part of unknown type `{part.type}`", param="input"
            )
        if part.text is None:
            raise InvalidRequestError(f"{where}[{position}] is a text part without `text`", param="input")
    return "".join(part.text or "" for part in parts)


class InputMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True, forbid_unknown_fields=True):
    """A message of the conversation; `type` may be left out, as OpenAI's easy input messages do."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(
    msgspec.Struct, tag_field="type", tag="function_call", kw_only=True, forbid_unknown_fields=True
):
    """A call the model made: in the output of an answer, and in the input of the next turn."""

    call_id: Annotated[str, Meta(min_length=1)]
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(
    msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True, forbid_unknown_fields=True
):
    """What the client's function returned for a call, as text."""

    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[InputPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem
_ITEM_KINDS: dict[str, type[InputItem]] = {
    "message": InputMessage,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def input_item(raw: dict[str, Any], index: int) -> InputItem:
    """One entry of `input` as its typed item; a kind this appliance cannot take is a 400 naming `input`."""
    kind = raw.get("type", "message")
    where = f"input[{index}]"
    if kind == "item_reference":
        raise InvalidRequestError(
            f"{where} refers to a stored item, but this appliance stores nothing; send the item itself.",
            param="input",
        )
    item_kind = _ITEM_KINDS.get(kind) if isinstance(kind, str) else None
    if item_kind is None:
        raise InvalidRequestError(
            f"{where} has type `{kind}`; this appliance takes message, function_call and "
            "function_call_output items.",
            param="input",
        )
    item: InputItem = _converted(raw, item_kind, where, "input")
    if isinstance(item, InputMessage):
        _part_texts(item.content, f"{where}.content")
    elif isinstance(item, FunctionCallOutputItem):
        _part_texts(item.output, f"{where}.output")
    return item


def item_text(item: InputMessage | FunctionCallOutputItem) -> str:
    """A message's content or a call output's output as one string (text parts joined)."""
    return _part_texts(item.content if isinstance(item, InputMessage) else item.output, "input")


class FunctionTool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A function the model may call, in the Responses API's flat shape."""

    type: Literal["function"] = "function"
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


def function_tool(raw: dict[str, Any], index: int) -> FunctionTool:
    """One entry of `tools` as a function tool; a hosted tool (web_search, file_search…) is a 400."""
    kind = raw.get("type")
    if kind != "function":
        raise InvalidRequestError(
            f"tools[{index}] is a `{kind}` tool, but this appliance runs no hosted tools: "
            "only tools of type `function` can be given.",
            param="tools",
        )
    tool: FunctionTool = _converted(raw, FunctionTool, f"tools[{index}]", "tools")
    return tool


class FunctionChoice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`tool_choice: {"type": "function", "name": …}`: the model must call this function."""

    type: Literal["function"]
    name: str


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


class TextFormatText(msgspec.Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    """Free text."""


class TextFormatJsonObject(msgspec.Struct, tag_field="type", tag="json_object", forbid_unknown_fields=True):
    """Any JSON object."""


class TextFormatJsonSchema(
    msgspec.Struct, tag_field="type", tag="json_schema", kw_only=True, forbid_unknown_fields=True
):
    """JSON that satisfies a named JSON Schema."""

    name: SchemaName
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


TextFormat = TextFormatText | TextFormatJsonObject | TextFormatJsonSchema


class TextConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`text`: the format of the output; `verbosity` is a hint for OpenAI's models, accepted and ignored."""

    format: TextFormat = msgspec.field(default_factory=TextFormatText)
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/responses. Stateless: nothing is stored, so nothing can be referred to later. `input` and
    `tools` are checked item by item (`input_items`, `function_tools`) so that a hosted tool or a stored
    item is refused by name rather than as an unknown field."""

    model: ModelName
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    # Accepted and ignored: hints for OpenAI's own models and services that change nothing here.
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def check(self) -> None:
        """What the types cannot say: stateless only, known items and tools, outputs that answer calls."""
        if self.store:
            raise InvalidRequestError(
                "store: true is not supported: this appliance stores no responses (send false or omit it)",
                param="store",
            )
        for param in ("previous_response_id", "conversation"):
            if getattr(self, param) is not None:
                raise InvalidRequestError(
                    f"{param} is not supported: this appliance is stateless and stores no responses; "
                    "send the whole conversation in `input`.",
                    param=param,
                )
        if self.background:
            raise InvalidRequestError(
                "background: true is not supported: a response is answered while the request waits",
                param="background",
            )
        if self.truncation == "auto":
            raise InvalidRequestError(
                'truncation: "auto" is not supported: an input longer than the context is refused '
                '(send "disabled" or omit it)',
                param="truncation",
            )
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequestError("input is an empty list; send at least one item", param="input")
        _check_outputs_answer_calls(self.input_items())
        self.function_tools()

    def input_items(self) -> list[InputItem]:
        """`input` as typed items (a string is one user message); 400 on an item this appliance can't take."""
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return [input_item(raw, index) for index, raw in enumerate(self.input)]

    def function_tools(self) -> list[FunctionTool]:
        """`tools` as function tools; 400 naming `tools` on a hosted tool or a malformed one."""
        return [function_tool(raw, index) for index, raw in enumerate(self.tools or ())]


def _check_outputs_answer_calls(items: list[InputItem]) -> None:
    """Every function_call_output answers a function_call earlier in `input` (400 naming its index)."""
    calls: set[str] = set()
    for index, item in enumerate(items):
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem) and item.call_id not in calls:
            raise InvalidRequestError(
                f"input[{index}]: the function_call_output for call_id `{item.call_id}` answers no "
                "function_call earlier in input (this appliance is stateless: send the call too)",
                param="input",
            )


class OutputText(msgspec.Struct, tag_field="type", tag="output_text", kw_only=True):
    """The text of an answer message."""

    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    """The assistant message of an answer."""

    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = []


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    """How many input tokens came from the prefix cache (none are written to a paid cache here)."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    """The served models do not reason apart from their answer: always zero."""

    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    """Token counts of one response."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class IncompleteDetails(msgspec.Struct, kw_only=True):
    """Why a response stopped before it was done."""

    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct, kw_only=True):
    """Why a response failed; `code` is one of the Responses API's own error codes."""

    code: Literal["server_error", "rate_limit_exceeded"]
    message: str


class ResponseObject(msgspec.Struct, kw_only=True):
    """The `response` object: the answer's output and usage, with the request's parameters echoed."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = []
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tool_choice: ToolChoice = "auto"
    tools: list[FunctionTool] = []
    truncation: Literal["disabled"] = "disabled"
    user: str | None = None
    store: bool = False
    background: bool = False
    previous_response_id: None = None
