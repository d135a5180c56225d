"""The OpenAI wire format, as msgspec structs in OpenAI's snake_case. Gateway and workers both speak it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequestError

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Meta(ge=1)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]


class StreamOptions(msgspec.Struct, kw_only=True):
    """`stream_options`: whether a final chunk carries the usage."""

    include_usage: bool = False


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a message's content; only text parts are understood by text models."""

    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """One message of a conversation; content may be a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content if part.type == "text")


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


class SamplingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields that chat and text completions share (top_k, min_p, repetition_penalty as in vLLM); an
    unknown field is refused (400), as OpenAI does, rather than silently ignored."""

    model: ModelName
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: str | list[str] | None = None
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

    @property
    def token_limit(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens, as in OpenAI's API."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest, kw_only=True):
    """POST /v1/completions: a prompt string, a one-element list of it, or token ids."""

    prompt: str | list[str | int]
    echo: bool = False

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
        return msgspec.json.decode(body, type=request_type)
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
