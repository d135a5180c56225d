"""Chat templates from GGUF files, rendered in a sandbox: a template is data and must never run code.

CVE-2024-34359 was a GGUF chat template that escaped a plain Jinja environment; the immutable sandbox blocks
attribute access to internals and mutation of the objects passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

from jinja2 import TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.errors import ChatTemplateMissingError, InvalidRequestError, ModelFileError


def _raise_exception(message: str) -> NoReturn:
    """Templates call this to reject a conversation (for example, roles that do not alternate)."""
    raise InvalidRequestError(f"The model's chat template rejected the messages: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


class ChatTemplate:
    """A compiled chat template, or none: then rendering raises a clear 400."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        self._bos_token = bos_token
        self._eos_token = eos_token
        self.source = source
        """The template's text (tool call formats are recognised from it)."""
        self.knows_tools = False
        """Whether the template renders a `tools` variable (Hugging Face's convention for tool calling)."""
        if source is None:
            self._template = None
            return
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
            self.knows_tools = "tools" in meta.find_undeclared_variables(environment.parse(source))
        except TemplateError as error:
            raise ModelFileError(f"the model's chat template does not compile: {error}") from error

    @property
    def present(self) -> bool:
        """Whether chat routes can serve this model."""
        return self._template is not None

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for `messages` (and `tools`, passed as Hugging Face templates expect them),
        ending where the assistant's answer starts. A null content renders as empty text."""
        if self._template is None:
            raise ChatTemplateMissingError(
                "This model has no chat template; use /v1/completions, or register it with --chat-template.",
                param="messages",
            )
        try:
            return self._template.render(
                messages=[{**m, "content": m.get("content") or ""} for m in messages],
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as error:
            raise InvalidRequestError(f"The chat template failed on these messages: {error}") from error
