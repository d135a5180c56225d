"""The call formats of the common model families, and the generic one for templates that know no tools.

Each format says how calls are written: text before the calls, each call's opening (name) and closing, the
separator between calls, and the text after them. The grammar writes exactly this; the parser reads it.

The generic format (any chat model, including the embedded default, whose template knows nothing of
tools): the tools are described in a system message, and the model answers a call with only this JSON:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolFormat:
    """How one family writes tool calls."""

    name: str
    begin: str
    """Text that opens the calls (and, for families that mark calls, is the marker the parser looks for)."""
    call_open: Callable[[str], str]
    call_close: str
    separator: str
    end: str
    arguments_key: str
    marker: str
    """Text whose appearance in the output starts the calls."""
    anywhere: bool
    """Whether calls may follow some text (marked families) or must be the whole answer (JSON families)."""
    recognises: Callable[[str], bool]

    def call_text(self, name: str, arguments: str) -> str:
        """One call written out, arguments as JSON text."""
        return self.call_open(name) + arguments + self.call_close

    def calls_text(self, calls: list[tuple[str, str]]) -> str:
        """Several calls written out as the model would write them."""
        return self.begin + self.separator.join(self.call_text(n, a) for n, a in calls) + self.end


def _opening(key: str) -> Callable[[str], str]:
    return lambda name: '{"name": ' + json.dumps(name) + f', "{key}": '


GENERIC = ToolFormat(
    name="generic",
    begin='{"tool_calls": [',
    call_open=_opening("arguments"),
    call_close="}",
    separator=", ",
    end="]}",
    arguments_key="arguments",
    marker="{",
    anywhere=False,
    recognises=lambda source: False,
)
HERMES = ToolFormat(
    name="hermes",
    begin="",
    call_open=lambda name: "<tool_call>\n" + _opening("arguments")(name),
    call_close="}\n</tool_call>",
    separator="\n",
    end="",
    arguments_key="arguments",
    marker="<tool_call>",
    anywhere=True,
    recognises=lambda source: "<tool_call>" in source,
)
MISTRAL = ToolFormat(
    name="mistral",
    begin="[TOOL_CALLS][",
    call_open=_opening("arguments"),
    call_close="}",
    separator=", ",
    end="]",
    arguments_key="arguments",
    marker="[TOOL_CALLS]",
    anywhere=True,
    recognises=lambda source: "[TOOL_CALLS]" in source,
)
LLAMA3 = ToolFormat(
    name="llama3",
    begin="",
    call_open=_opening("parameters"),
    call_close="}",
    separator="; ",
    end="",
    arguments_key="parameters",
    marker="{",
    anywhere=False,
    recognises=lambda source: (
        "<|python_tag|>" in source or ("<|start_header_id|>" in source and "ipython" in source)
    ),
)
FORMATS: tuple[ToolFormat, ...] = (HERMES, MISTRAL, LLAMA3)
"""The native families, tried in this order against a template that knows tools."""


def detect_format(template_source: str | None, knows_tools: bool) -> ToolFormat:
    """The native format of a template that knows tools and matches a family, else the generic one."""
    if template_source is not None and knows_tools:
        for fmt in FORMATS:
            if fmt.recognises(template_source):
                return fmt
    return GENERIC
