"""Which of vLLM's tool-call parsers reads a model's calls: from its architecture, or set per model.

vLLM answers `tool_choice: "auto"` only when started with `--enable-auto-tool-choice --tool-call-parser P`,
where P must match how the model family writes calls (named and `required` calls use guided decoding and
need no parser). The names are those vLLM's ToolParserManager registers.
"""

from __future__ import annotations

import re

from appliance.errors import InvalidRequestError

PARSER_BY_ARCHITECTURE: dict[str, str] = {
    # Qwen 2/2.5/3 and the Hermes fine-tunes write <tool_call>{...}</tool_call>.
    "Qwen2ForCausalLM": "hermes",
    "Qwen2MoeForCausalLM": "hermes",
    "Qwen3ForCausalLM": "hermes",
    "Qwen3MoeForCausalLM": "hermes",
    # Llama 3.1-3.3 write a JSON object (optionally after <|python_tag|>); Llama 4 writes Python calls.
    "LlamaForCausalLM": "llama3_json",
    "Llama4ForConditionalGeneration": "llama4_pythonic",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mistral",
    "GraniteForCausalLM": "granite",
    "GraniteMoeForCausalLM": "granite",
    "InternLM2ForCausalLM": "internlm",
    "JambaForCausalLM": "jamba",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Glm4MoeForCausalLM": "glm45",
    "GptOssForCausalLM": "openai",
}
AUTO, NONE = "auto", "none"
"""The per-model settings that are not parser names: follow the architecture, or offer no automatic calls."""
_NAME = re.compile(r"[a-z0-9_]{1,32}")


def check_tool_parser(value: str) -> str:
    """`value` as stored: `auto`, `none` or a parser name (vLLM itself refuses a name it does not know)."""
    if value in (AUTO, NONE) or _NAME.fullmatch(value):
        return value
    known = ", ".join(sorted(set(PARSER_BY_ARCHITECTURE.values())))
    raise InvalidRequestError(
        f"tool parser {value!r}: use auto, none, or one of vLLM's parser names ({known}, ...)",
        param="tool_parser",
    )


def tool_parser_for(architecture: str, setting: str | None) -> str:
    """The parser vLLM gets for a model ('' for none): the per-model setting, else the architecture's."""
    if setting == NONE:
        return ""
    if setting and setting != AUTO:
        return setting
    return PARSER_BY_ARCHITECTURE.get(architecture, "")
