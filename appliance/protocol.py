"""The OpenAI wire format, as msgspec structs in OpenAI's snake_case. Gateway and workers both speak it."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequestError
from appliance.wire.tools import (
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    check_tool_history,
    check_tools,
)

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Meta(ge=1)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]


class StreamOptions(msgspec.Struct, kw_only=True):
    """`stream_options`: whether a final chunk carries the usage."""

    include_usage: bool = False


MEDIA_PARTS = frozenset({"image_url", "input_audio", "file"})
"""Content part types that carry media: refused, never dropped, since the models served read text only."""
MAX_STOP = 4
"""Stop strings one request may send: OpenAI's limit. Each is searched for after every token, so a long
list costs every token of the answer (their length is bounded by `[limits] max_stop_chars`)."""


class ContentPart(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One part of a message's content; only text parts are understood by text models."""

    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message of a conversation; content may be a string or a list of text parts. An assistant
    message may carry the tool calls it made (content then null), a tool message the call it answers."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def check_parts(self, index: int) -> None:
        """Refuse content the model cannot read (images, audio, files) with a 400 rather than drop it."""
        if self.content is None or isinstance(self.content, str):
            return
        for part in self.content:
            if part.type in MEDIA_PARTS:
                raise InvalidRequestError(
                    f"messages[{index}] has a `{part.type}` content part, but this model reads text only; "
                    "send the content as text.",
                    param="messages",
                )
            if part.type != "text":
                raise InvalidRequestError(
                    f"messages[{index}] has a content part of unknown type `{part.type}`", param="messages"
                )


class JsonSchemaFormat(msgspec.Struct, kw_only=True):
    """`response_format.json_schema`: a named JSON Schema the output must satisfy."""

    name: str = "output"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct, kw_only=True):
    """`response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Fields that chat and text completions share (top_k, min_p, repetition_penalty as in vLLM); an
    unknown field is refused (400), as OpenAI does, rather than silently ignored. Encoded without the
    fields left unset, so what reaches an engine is what the client asked for."""

    model: ModelName
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None  # engines take a C int: refuse, never wrap
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    response_format: ResponseFormat | None = None
    # Accepted and ignored (README "Accepted and ignored"): they change nothing in the answer.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    IGNORED: ClassVar[tuple[str, ...]] = ("metadata", "store", "service_tier")
    """Fields accepted and ignored: never sent on to an engine."""

    def check(self) -> None:
        """Checks across fields that the struct's types cannot state; 400 naming the parameter."""
        if self.store:
            raise InvalidRequestError(
                "store: true is not supported: this appliance keeps no completions (send false or omit it)",
                param="store",
            )

    def for_engine(self, model: str) -> Self:
        """The request as an engine gets it: the canonical model name, the ignored fields left out."""
        return msgspec.structs.replace(self, model=model, **dict.fromkeys(self.IGNORED))

    @property
    def stop_list(self) -> list[str]:
        """Stop strings as a list (OpenAI allows one string or up to four)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingRequest, kw_only=True):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    # Accepted and ignored: hints for OpenAI's own models and services that change nothing here.
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    IGNORED: ClassVar[tuple[str, ...]] = (
        *SamplingRequest.IGNORED,
        "prediction",
        "reasoning_effort",
        "modalities",
        "prompt_cache_key",
        "safety_identifier",
    )

    def check(self) -> None:
        """Content the model can read, tools that make sense, a history whose tool messages answer calls."""
        super().check()
        for index, message in enumerate(self.messages):
            message.check_parts(index)
        if self.modalities is not None and any(kind != "text" for kind in self.modalities):
            raise InvalidRequestError(
                'modalities: this appliance answers with text only (send ["text"])', param="modalities"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        check_tools(self.tools, self.tool_choice)
        check_tool_history(self.tool_history)

    @property
    def tool_history(self) -> list[tuple[str, list[ToolCall] | None, str | None]]:
        """Each message's role, tool calls and tool_call_id, as the tool checks read them."""
        return [(message.role, message.tool_calls, message.tool_call_id) for message in self.messages]

    @property
    def requires_tool_call(self) -> bool:
        """Whether the answer must be a tool call (`required` or a named function)."""
        return self.wants_tools and (
            self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        )

    @property
    def wants_tools(self) -> bool:
        """Whether the model is offered tools (tools given and tool_choice not `none`)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def token_limit(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens, as in OpenAI's API."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest, kw_only=True):
    """POST /v1/completions: a prompt string, a one-element list of it, or token ids."""

    prompt: str | list[str | int]
    echo: bool = False
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None

    @property
    def token_limit(self) -> int | None:
        """The legacy API's default is 16 tokens."""
        return 16 if self.max_tokens is None else self.max_tokens


class EmbeddingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/embeddings: a string, a list of strings, token ids, or a list of token id lists."""

    model: ModelName
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    """How many prompt tokens were served from the prefix cache."""

    cached_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Token counts of one response."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
    """Usage with the total filled in; `cached_tokens` adds prompt_tokens_details."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=None
        if cached_tokens is None
        else PromptTokensDetails(cached_tokens=cached_tokens),
    )


PROMPT_LIMIT_HEADER = "X-Max-Prompt-Tokens"
"""Set by the gateway on a request to a worker: the key's most prompt tokens (only the worker can count)."""

_AT_PATH = " - at `$."
T = TypeVar("T")


def decode_request(body: bytes, request_type: type[T]) -> T:
    """Decode a JSON body into `request_type`; malformed JSON or a wrong field is InvalidRequestError."""
    try:
        decoded = msgspec.json.decode(body, type=request_type)
    except msgspec.ValidationError as error:
        text = str(error)
        reason, _, path = text.partition(_AT_PATH)
        param = path.rstrip("`").split("[")[0].split(".")[0] or None
        raise InvalidRequestError(
            f"Invalid request: {reason} at `{path.rstrip('`')}`" if path else text, param=param
        ) from error
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        # Invalid UTF-8 and absurdly deep nesting surface as these, not as DecodeError.
        raise InvalidRequestError(f"We could not parse the JSON body of your request: {error}") from error
    check = getattr(decoded, "check", None)
    if callable(check):
        check()  # what the types cannot say: fields that depend on each other
    return decoded
