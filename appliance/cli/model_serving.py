"""`appliance models enable|disable|alias`: what the registry serves; a running gateway follows within a
second (it polls the registry's change counter: see appliance/serving/live.py), so none needs a restart."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance.errors import InvalidRequestError
from appliance.registry.registry import Registry, open_registry
from appliance.settings import home_from_environment, load_settings

LIVE = "a running gateway follows within a second"


def _registry() -> Registry:
    return open_registry(load_settings(home_from_environment()).database_path)


def models_enable(name: str) -> None:
    """Serve a model again: a running gateway starts its worker (if the plan fits it beside the others)."""
    registry = _registry()
    model = registry.models.set_status(name, "enabled")
    registry.audit.record("models.enable", outcome="success", target=model.name, detail="cli")
    typer.echo(f"enabled {model.name} ({LIVE}: its worker starts; `appliance plan` says whether it fits)")


def models_disable(name: str) -> None:
    """Stop serving a model: new requests get 404 at once, requests in flight finish, its worker stops."""
    registry = _registry()
    model = registry.models.set_status(name, "disabled")
    registry.audit.record("models.disable", outcome="success", target=model.name, detail="cli")
    typer.echo(
        f"disabled {model.name} ({LIVE}: no new requests; its worker stops once those in flight finish)"
    )


def models_alias(
    name: str,
    add: Annotated[list[str] | None, typer.Option("--add", help="an alias to add; repeatable")] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="an alias to remove; repeatable")
    ] = None,
) -> None:
    """Add or remove a model's aliases (the other names a request may use for it), at once."""
    if not add and not remove:
        raise InvalidRequestError("nothing to change: give --add ALIAS or --remove ALIAS", param="alias")
    registry = _registry()
    current = next((m for m in registry.models.list() if m.name == name), None)
    if current is None:
        current = registry.models.resolve(name)  # an alias names the model too; else its 404 message
    missing = [alias for alias in remove or () if alias not in current.aliases]
    if missing:
        raise InvalidRequestError(f"{current.name} has no alias {missing[0]!r}", param="alias")
    kept = [alias for alias in current.aliases if alias not in (remove or ())]
    wanted = tuple(dict.fromkeys([*kept, *(add or ())]))
    model = registry.models.set_aliases(current.name, wanted)
    detail = f"cli: aliases {', '.join(model.aliases) or 'none'}"
    registry.audit.record("models.alias", outcome="success", target=model.name, detail=detail)
    typer.echo(f"{model.name}: aliases {', '.join(model.aliases) or 'none'} (requests use them at once)")


def register_model_serving_commands(models_app: typer.Typer) -> None:
    """Attach `models enable|disable|alias` to the CLI's `models` group."""
    models_app.command("enable")(models_enable)
    models_app.command("disable")(models_disable)
    models_app.command("alias")(models_alias)
