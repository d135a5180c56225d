"""`appliance models versions|activate|rollback`: model versions, switched in the running gateway."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api.cli_admin import KeyFileOption, admin_call
from appliance.registry.registry import open_registry
from appliance.settings import home_from_environment, load_settings

ACTIVATION_MARGIN_S = 30.0


def _activation_timeout() -> float:
    """An activation loads a worker and runs every check: their limits together, plus a margin."""
    settings = load_settings(home_from_environment())
    checks = len(settings.activation.checks) + 1  # the prompt suite and the deep probe
    return (
        settings.workers.startup_timeout_s
        + checks * max(settings.activation.check_timeout_s, settings.fallback.probe_timeout_s)
        + ACTIVATION_MARGIN_S
    )


def _report(done: dict[str, Any]) -> None:
    for check in done["checks"]:
        typer.echo(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['check']}: {check['detail']}")
    typer.echo(f"{done['name']} now serves version {done['version']} (was {done['replaced_version']})")


def models_versions(name: str) -> None:
    """List every version of a model; `*` marks the one serving."""
    registry = open_registry(load_settings(home_from_environment()).database_path)
    typer.echo(f"   {'VERSION':10}  {'QUANT':8}  {'SIZE MB':>8}  {'SHA256':12}  PATH")
    for model in registry.models.versions(name):
        mark = "*" if model.active else " "
        typer.echo(
            f"{mark}  {model.version:10}  {model.quantization:8}  {model.size_bytes / 1e6:8.1f}  "
            f"{model.sha256[:12]:12}  {model.path}"
        )


def models_activate(
    name: str,
    version: Annotated[str, typer.Option(help="the registered version to serve")],
    key_file: KeyFileOption = None,
) -> None:
    """Load VERSION beside the serving one, check it (deep probe, prompt suite), then switch to it."""
    typer.echo(f"loading {name} version {version} beside the serving one and checking it ...", err=True)
    body = {"version": version}
    _report(admin_call(key_file, "POST", f"/admin/models/{name}/activate", body, _activation_timeout()))


def models_rollback(name: str, key_file: KeyFileOption = None) -> None:
    """Switch back to the version that served before the current one (checked the same way)."""
    typer.echo(f"loading the previous version of {name} and checking it ...", err=True)
    _report(admin_call(key_file, "POST", f"/admin/models/{name}/rollback", None, _activation_timeout()))


def register_version_commands(models_app: typer.Typer) -> None:
    """Add versions, activate and rollback to `appliance models`."""
    models_app.command("versions")(models_versions)
    models_app.command("activate")(models_activate)
    models_app.command("rollback")(models_rollback)
