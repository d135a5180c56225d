"""`appliance models load|unload|ps|pin|unpin`: which models the running gateway holds in memory.

load, unload and ps act on the running gateway through its admin API (like `models activate`): only it knows
what is loaded. pin and unpin write the model's keep-alive to the registry, like `models set`: a running
gateway reads it within a second, and a stopped one at its next start.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import msgspec
import typer

from api.cli_admin import KeyFileOption, admin_call
from appliance.hardware import Hardware
from appliance.planner import ModelSpec, ram_for_models
from appliance.registry.models import ModelInfo
from appliance.registry.registry import open_registry
from appliance.serving.residency_plan import alone_candidates, explain_residency, explanation_lines
from appliance.settings import Settings, home_from_environment, load_settings
from appliance.settings_residency import PINNED
from appliance.wire.residency import (
    ModelLoaded,
    ModelUnloaded,
    ResidencyReport,
    ResidentModel,
    budget_line,
    gib,
    idle_text,
    shown_state,
    until_text,
)

PS_COLUMNS = "{:20}  {:7}  {:7}  {:>8}  {:14}  {:>9}  {:10}  {}"
PS_HEADER = ("NAME", "VERSION", "STATE", "MEMORY", "DEVICES", "IN FLIGHT", "IDLE", "UNTIL")
READ_TIMEOUT_S = 30.0
LOAD_MARGIN_S = 30.0


def _settings() -> Settings:
    return load_settings(home_from_environment())


def _load_timeout(settings: Settings) -> float:
    """A load waits for the worker's start (and for evicted ones to stop): their limits, plus a margin."""
    return settings.workers.startup_timeout_s + settings.workers.stop_timeout_s + LOAD_MARGIN_S


def ps_row(model: ResidentModel) -> str:
    """One model as `appliance models ps` prints it."""
    return PS_COLUMNS.format(
        model.name,
        model.version or "-",
        shown_state(model),
        f"{gib(model.memory_bytes)} GiB",
        ",".join(model.devices) or "-",
        model.in_flight,
        idle_text(model),
        until_text(model),
    )


def ps_text(report: ResidencyReport) -> str:
    """The table of `appliance models ps`, then the budget line; a failed load's reason under its row."""
    lines = [PS_COLUMNS.format(*PS_HEADER)]
    for model in report.data:
        lines.append(ps_row(model))
        if model.state == "failed" and model.last_error:
            lines.append(f"  last load failed: {model.last_error}")
    lines.append(budget_line(report.budget))
    return "\n".join(lines)


def models_load(name: str, key_file: KeyFileOption = None) -> None:
    """Load a model in the running gateway now (idle unpinned models are evicted if it needs the room)."""
    typer.echo(f"loading {name} ...", err=True)
    answer = admin_call(key_file, "POST", f"/admin/models/{name}/load", None, _load_timeout(_settings()))
    done = msgspec.convert(answer, ModelLoaded)
    how = "already loaded" if done.load_ms == 0 else f"loaded in {done.load_ms / 1000:.1f} s"
    typer.echo(f"{done.name} {how}; it holds {gib(done.memory_bytes)} GiB")


def models_unload(name: str, key_file: KeyFileOption = None) -> None:
    """Unload a model from the running gateway now (refused while it has requests in flight)."""
    timeout = _settings().workers.stop_timeout_s + LOAD_MARGIN_S
    answer = admin_call(key_file, "POST", f"/admin/models/{name}/unload", None, timeout)
    done = msgspec.convert(answer, ModelUnloaded)
    typer.echo(f"{done.name} unloaded; the next request loads it again")


def models_ps(key_file: KeyFileOption = None) -> None:
    """What the running gateway holds: each model's state, memory, idle time and expiry, and the budget."""
    answer = admin_call(key_file, "GET", "/admin/residency", None, READ_TIMEOUT_S)
    report = msgspec.convert(answer, ResidencyReport)
    typer.echo(ps_text(report))


def _set_keep_alive(name: str, seconds: float | None, action: str, said: str) -> None:
    registry = open_registry(_settings().database_path)
    model = registry.models.resolve(name)
    registry.models.set_keep_alive(model.name, seconds)
    registry.audit.record(action, outcome="success", target=model.name, detail=f"cli: {said}")
    typer.echo(f"{model.name}: {said} (a running gateway follows within a second)")


def models_pin(name: str) -> None:
    """Keep a model loaded once it is: never unloaded for idleness, never evicted for another."""
    _set_keep_alive(name, PINNED, "models.pin", "pinned: never unloaded while serving")


def models_unpin(name: str) -> None:
    """Let a pinned model unload again after the `[residency] keep_alive_s` idle time."""
    _set_keep_alive(name, None, "models.unpin", "unpinned: unloads after the default keep-alive")


def pinned_names(settings: Settings, models: Iterable[ModelInfo]) -> frozenset[str]:
    """The models whose keep-alive (their own, else `[residency]`'s) pins them."""
    default = settings.residency.keep_alive_s
    return frozenset(
        m.name for m in models if (default if m.keep_alive_s is None else m.keep_alive_s) == PINNED
    )


def residency_text(
    hardware: Hardware, specs: list[ModelSpec], settings: Settings, pinned: Collection[str], vllm_problem: str
) -> str:
    """What `appliance plan` prints under its table: the models that fit together within the budget and
    max_loaded, and whom each other model would evict, or why it never fits."""
    candidates = alone_candidates(hardware, specs, settings, pinned=pinned, vllm_problem=vllm_problem)
    explained = explain_residency(
        candidates,
        ram_budget_bytes=ram_for_models(hardware, settings),
        max_loaded=settings.residency.max_loaded,
    )
    return "\n".join(explanation_lines(explained))


def register_residency_commands(models_app: typer.Typer) -> None:
    """Attach `models load|unload|ps|pin|unpin` to the CLI's `models` group."""
    models_app.command("load")(models_load)
    models_app.command("unload")(models_unload)
    models_app.command("ps")(models_ps)
    models_app.command("pin")(models_pin)
    models_app.command("unpin")(models_unpin)
