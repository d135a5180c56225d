"""POST /tokenize and /detokenize in vLLM's shapes: a model's own tokenizer, chat template included."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequestError
from appliance.protocol import ChatMessage, ModelName
from appliance.wire.tools import ToolDefinition, check_tools


class TokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Either `prompt` (text as /v1/completions takes it) or `messages` (rendered as /v1/chat/completions
    renders them, tools included), never both."""

    model: ModelName
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    tools: list[ToolDefinition] | None = None
    add_special_tokens: bool | None = None
    """Whether the tokenizer adds the model's BOS token; unset: exactly as a completion of the same prompt
    or messages is tokenized, so the count equals that completion's `usage.prompt_tokens`."""
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    def check(self) -> None:
        """Exactly one of prompt and messages; tools only with messages."""
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("send either `prompt` or `messages`", param="prompt")
        if self.tools is not None and self.messages is None:
            raise InvalidRequestError("tools are only counted with messages", param="tools")
        check_tools(self.tools, None)
        for index, message in enumerate(self.messages or ()):
            message.check_parts(index)


class TokenizeResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The tokens, their number, the model's context and, if asked, each token's text."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Token ids to turn back into text."""

    model: ModelName
    tokens: list[Annotated[int, Meta(ge=0)]]


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    """The text of the tokens."""

    prompt: str
