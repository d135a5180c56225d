"""`appliance models set`: per-model settings that change how a model is served, not what it is."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance.engines.vllm.tool_parsers import AUTO, check_tool_parser, tool_parser_for
from appliance.errors import InvalidRequestError
from appliance.registry.registry import open_registry
from appliance.settings import home_from_environment, load_settings

ToolParserOption = Annotated[
    str | None,
    typer.Option(
        help="vLLM's tool-call parser for `tool_choice: auto` (hermes, llama3_json, mistral, ...); "
        "`auto` follows the model's architecture, `none` offers no automatic tool calls",
    ),
]


def models_set(name: str, tool_parser: ToolParserOption = None) -> None:
    """Change a model's serving settings (every version of it; a running vLLM worker takes it at restart)."""
    if tool_parser is None:
        raise InvalidRequestError("nothing to set: give --tool-parser", param="tool_parser")
    value = check_tool_parser(tool_parser)
    registry = open_registry(load_settings(home_from_environment()).database_path)
    model = registry.models.set_tool_parser(name, value)
    registry.audit.record("models.set", outcome="success", target=name, detail=f"tool_parser {value}")
    chosen = tool_parser_for(model.architecture, model.tool_parser) or "none"
    how = "from its architecture" if value == AUTO else "as set"
    typer.echo(f"{name}: tool parser {chosen} ({how}; used when vLLM serves it)")


def register_model_settings_commands(models_app: typer.Typer) -> None:
    """Attach `models set` to the CLI's `models` group."""
    models_app.command("set")(models_set)
