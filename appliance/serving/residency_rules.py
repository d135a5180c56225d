"""The pure rules of residency: whose keep-alive ran out, which idle model goes first, what a refusal says.

No process, clock or registry here: Residency (residency.py) gathers the facts and acts on the answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.errors import ApplianceError, ConflictError, EngineUnavailableError
from appliance.planner import GIB, ModelPlan
from appliance.registry.models import ModelInfo
from appliance.settings_residency import ResidencySettings

LOAD_MS_HEADER = "X-Model-Load-Ms"
"""On a response whose request waited for its model to load: the whole milliseconds it waited. Absent when
the model was loaded already (a warm request)."""


class ModelExceedsBudgetError(ApplianceError):
    """The model can never be loaded here: alone on an empty machine it needs more than the budget holds."""

    status_code = 503
    error_type = "server_error"
    code = "model_exceeds_budget"


class ModelLoadError(EngineUnavailableError):
    """The model's worker did not load (a corrupt file, a worker that exited before it was ready)."""

    code = "model_load_failed"
    retry_after_s = None  # the next request tries again, and a broken file fails again: no hint to retry


class NoRoomError(EngineUnavailableError):
    """Every loaded model that holds the room is busy (or the load took too long): retry shortly."""

    code = "no_room_to_load"
    retry_after_s = 5


class PinnedOutError(EngineUnavailableError):
    """Pinned models hold the room the model needs; only unpinning one of them makes room."""

    code = "pinned_models_hold_room"
    retry_after_s = None


class ModelBusyError(ConflictError):
    """An unload asked of a model that is answering requests (or loading)."""

    code = "model_busy"


def keep_alive_of(model: ModelInfo, settings: ResidencySettings) -> float:
    """The model's own keep-alive, else the setting's (-1 pinned, 0 after each request)."""
    return settings.keep_alive_s if model.keep_alive_s is None else model.keep_alive_s


def expired(idle_since: float | None, keep_alive_s: float, now: float) -> bool:
    """Whether an idle, unpinned model has been idle for its whole keep-alive."""
    return keep_alive_s >= 0 and idle_since is not None and now - idle_since >= keep_alive_s


@dataclass(frozen=True)
class Candidate:
    """A loaded model as eviction sees it."""

    name: str
    engine: str
    idle: bool
    """No request in flight, none claimed between `ensure` and the worker."""
    pinned: bool
    idle_since: float
    """When its last request finished (or it finished loading), monotonic seconds."""


def choose_victim(candidates: Iterable[Candidate], engine: str, *, any_engine: bool) -> str | None:
    """The least recently used idle, unpinned model whose unloading makes room for a model of `engine`
    (any engine when the count of loaded models is what is full); None when there is none."""
    helpful = [c for c in candidates if c.idle and not c.pinned and (any_engine or c.engine == engine)]
    if not helpful:
        return None
    return min(helpful, key=lambda c: c.idle_since).name


def gib(size: int) -> str:
    """Bytes as GiB with two decimals: small models are a tenth of a GiB."""
    return f"{size / GIB:.2f} GiB"


def figures(plan: ModelPlan) -> str:
    """`0.80 GiB (weights 0.09, KV 0.19, overhead 0.50)`: what the plan needs and of what."""
    parts = (plan.weights_bytes, plan.kv_cache_bytes, plan.overhead_bytes)
    weights, kv, overhead = (f"{part / GIB:.2f}" for part in parts)
    return f"{gib(plan.needed_bytes)} (weights {weights}, KV {kv}, overhead {overhead})"


def exceeds_budget_message(name: str, plan: ModelPlan, budget_bytes: int) -> str:
    """Why a model can never be loaded within the RAM budget, with the figures."""
    return f"{name} needs {figures(plan)}; the RAM budget holds {gib(budget_bytes)}"


def pinned_out_message(name: str, plan: ModelPlan, pinned: list[str], why: str) -> str:
    """Why a model cannot load while the pinned models stay loaded."""
    held = ", ".join(pinned)
    return (
        f"The model `{name}` does not fit beside the pinned model(s) {held}: it needs {figures(plan)}; "
        f"{why}. Unpin one (`appliance models set NAME --keep-alive default`) to make room."
    )
