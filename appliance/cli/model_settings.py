"""`appliance models set`: per-model settings that change how a model is served, not what it is."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance.engines.vllm.tool_parsers import AUTO, check_tool_parser, tool_parser_for
from appliance.errors import InvalidRequestError
from appliance.registry.registry import open_registry
from appliance.settings import home_from_environment, load_settings
from appliance.settings_residency import describe_keep_alive, parse_keep_alive

ToolParserOption = Annotated[
    str | None,
    typer.Option(
        help="vLLM's tool-call parser for `tool_choice: auto` (hermes, llama3_json, mistral, ...); "
        "`auto` follows the model's architecture, `none` offers no automatic tool calls",
    ),
]
KeepAliveOption = Annotated[
    str | None,
    typer.Option(
        help="how long the model stays loaded when idle: 30s, 10m, 1h or seconds; -1 = pinned (never "
        "unloaded or evicted), 0 = unloaded after each request, `default` = `[residency] keep_alive_s`",
    ),
]


def models_set(name: str, tool_parser: ToolParserOption = None, keep_alive: KeepAliveOption = None) -> None:
    """Change a model's serving settings (every version of it; a serving gateway follows within a second,
    a running vLLM worker takes a new tool parser at restart)."""
    if tool_parser is None and keep_alive is None:
        raise InvalidRequestError("nothing to set: give --tool-parser or --keep-alive", param="tool_parser")
    settings = load_settings(home_from_environment())
    seconds = parse_keep_alive(keep_alive) if keep_alive is not None else None
    value = check_tool_parser(tool_parser) if tool_parser is not None else None
    registry = open_registry(settings.database_path)
    if value is not None:
        model = registry.models.set_tool_parser(name, value)
        registry.audit.record("models.set", outcome="success", target=name, detail=f"tool_parser {value}")
        chosen = tool_parser_for(model.architecture, model.tool_parser) or "none"
        how = "from its architecture" if value == AUTO else "as set"
        typer.echo(f"{name}: tool parser {chosen} ({how}; used when vLLM serves it)")
    if keep_alive is not None:
        registry.models.set_keep_alive(name, seconds)
        shown = "default" if seconds is None else f"{seconds:g}"
        registry.audit.record("models.set", outcome="success", target=name, detail=f"keep_alive {shown}")
        effective = describe_keep_alive(settings.residency.keep_alive_s if seconds is None else seconds)
        how = "the [residency] setting" if seconds is None else "as set"
        typer.echo(f"{name}: keep-alive {effective} ({how})")


def register_model_settings_commands(models_app: typer.Typer) -> None:
    """Attach `models set` to the CLI's `models` group."""
    models_app.command("set")(models_set)
