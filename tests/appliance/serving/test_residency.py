"""Residency over a real registry and a real supervisor whose workers are never started (no process runs;
tests/e2e/test_residency_e2e.py drives real workers): what loads at start within the budget and
`max_loaded`, what stays cold, what is refused for good and why, what an admin sees, and which model an
eviction unloads."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import EngineUnavailableError, ModelNotFoundError
from appliance.hardware import Hardware
from appliance.planner import GIB, Plan, plan_beside, spec_from_model
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry, open_registry
from appliance.serving.events import Events
from appliance.serving.residency import SERVE, Residency, ResidentState
from appliance.serving.residency_rules import ModelBusyError, ModelExceedsBudgetError, PinnedOutError
from appliance.settings import Settings
from appliance.settings_residency import ResidencySettings
from appliance.supervisor import Supervisor, WorkerState
from tests.appliance.serving.test_live import FAKE_GGUF


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _needed() -> int:
    """What one of the fake models needs alone (the planner's figures: its overhead, mostly)."""
    model = ModelInfo(
        1, "x", (), "gguf", "llama", "Q4_1", Path("/m/x.gguf"), "ab" * 32, FAKE_GGUF.size_bytes, 2048,
        True, None, "enabled", 0,
    )  # fmt: skip
    return plan_beside(Hardware(), [], [spec_from_model(model)], Settings(home=Path("/"))).needed_bytes


def _parts(
    tmp_path: Path, rules: ResidencySettings, names: tuple[str, ...], *, startable: set[str] | None = None
) -> tuple[Registry, Supervisor, Residency, Events, Clock]:
    settings = Settings(home=tmp_path, residency=rules)
    registry = open_registry(settings.database_path)
    for index, name in enumerate(names):
        registry.models.add(
            Path(f"/m/{name}.gguf"), replace(FAKE_GGUF, sha256=f"{index:02x}" * 32), name=name
        )
    supervisor = Supervisor(settings, [], Plan(Hardware(), ()))
    events, clock = Events(), Clock()
    allowed = startable or set()
    residency = Residency(
        settings, registry, supervisor, Hardware(), events,
        may_start=lambda model: model.name in allowed, clock=clock,
    )  # fmt: skip
    return registry, supervisor, residency, events, clock


def _budget_for(models: float) -> ResidencySettings:
    """A RAM budget that holds `models` of the fake models (a fraction: not one more)."""
    return ResidencySettings(ram_budget_gib=_needed() * models / GIB)


async def test_start_loads_in_registry_order_what_fits_the_budget_and_the_rest_is_cold(
    tmp_path: Path,
) -> None:
    """Three models, a budget for two and a half: the first two get workers, the third is cold and
    servable, and the budget shows what the two take."""
    _, supervisor, residency, _, _ = _parts(tmp_path, _budget_for(2.5), ("a", "b", "c"))
    await residency.start()
    assert list(supervisor.workers) == ["a", "b"]
    states = {view.name: view.state for view in residency.views()}
    assert states == {"a": ResidentState.LOADING, "b": ResidentState.LOADING, "c": ResidentState.COLD}
    assert residency.cold_servable("c")
    assert not residency.cold_servable("a")
    budget = residency.budget()
    assert budget.ram_used_bytes == 2 * _needed()
    assert budget.ram_budget_bytes == int(_needed() * 2.5 / GIB * GIB)
    assert supervisor.not_started == {}
    await residency.close()


async def test_max_loaded_bounds_the_models_loaded_at_start(tmp_path: Path) -> None:
    """However much memory there is, `max_loaded = 1` starts one."""
    _, supervisor, residency, _, _ = _parts(tmp_path, ResidencySettings(max_loaded=1), ("a", "b"))
    await residency.start()
    assert list(supervisor.workers) == ["a"]
    await residency.close()


async def test_a_model_larger_than_the_budget_is_refused_with_the_figures(tmp_path: Path) -> None:
    """Alone it needs more than the budget holds: never started, in not_started with the figures, audited
    once, FAILED in the views, and a request for it is a 503 `model_exceeds_budget` without Retry-After."""
    registry, supervisor, residency, _, _ = _parts(tmp_path, _budget_for(0.5), ("big",))
    await residency.start()
    residency.sync(registry.models.enabled())
    reason = supervisor.not_started["big"]
    assert reason.startswith(f"big needs {_needed() / GIB:.2f} GiB (weights 0.00, KV ")
    assert reason.endswith(f"the RAM budget holds {_needed() * 0.5 / GIB:.2f} GiB")
    [view] = residency.views()
    assert (view.state, view.last_error, view.memory_bytes) == (ResidentState.FAILED, reason, _needed())
    with pytest.raises(ModelExceedsBudgetError) as raised:
        await residency.ensure(registry.models.serving("big"))
    assert raised.value.message == f"The model `big` cannot be loaded here: {reason}."
    assert (raised.value.status_code, raised.value.code, raised.value.retry_after_s) == (
        503, "model_exceeds_budget", None,
    )  # fmt: skip
    refusals = [e for e in registry.audit.recent(50) if e.action == SERVE and e.outcome == "failure"]
    assert [e.detail for e in refusals] == [f"not started: {reason}"]
    assert not residency.servable("big")
    await residency.close()


async def test_a_model_enabled_while_serving_is_loaded_if_it_fits_else_cold(tmp_path: Path) -> None:
    """Budget for one: a second model added while serving stays cold (nothing is unloaded for it), audited
    as such; with room it gets a worker at once."""
    registry, supervisor, residency, _, _ = _parts(tmp_path, _budget_for(1.5), ("a",))
    await residency.start()
    registry.models.add(Path("/m/b.gguf"), replace(FAKE_GGUF, sha256="cd" * 32), name="b")
    residency.sync(registry.models.enabled())
    assert list(supervisor.workers) == ["a"]
    [served] = [e for e in registry.audit.recent(50) if e.action == SERVE]
    assert (served.target, served.detail) == ("b", "version 1: cold until requested")
    registry.models.set_status("a", "disabled")
    withdrawn = supervisor.withdraw("a")  # as LiveModels does
    assert withdrawn is not None
    await supervisor.retire(withdrawn, 0)
    registry.models.add(Path("/m/c.gguf"), replace(FAKE_GGUF, sha256="ef" * 32), name="c")
    residency.sync(registry.models.enabled())
    assert list(supervisor.workers) == ["c"], "room again: the new one is loaded, the cold one stays cold"
    assert [view.name for view in residency.views()] == ["b", "c"]
    await residency.close()


async def test_keep_alive_follows_the_registry_and_pins(tmp_path: Path) -> None:
    """A per-model keep-alive set in the registry shows at the next sync; -1 is pinned; NULL the setting."""
    registry, _, residency, _, _ = _parts(tmp_path, ResidencySettings(keep_alive_s=120), ("a",))
    await residency.start()
    assert (residency.views()[0].keep_alive_s, residency.views()[0].pinned) == (120, False)
    registry.models.set_keep_alive("a", -1)
    residency.sync(registry.models.enabled())
    assert (residency.views()[0].keep_alive_s, residency.views()[0].pinned) == (-1, True)
    registry.models.set_keep_alive("a", None)
    residency.sync(registry.models.enabled())
    assert residency.views()[0].keep_alive_s == 120
    await residency.close()


async def test_eviction_unloads_the_least_recently_used_idle_model(tmp_path: Path) -> None:
    """Two loaded (their workers marked ready; no process), a budget for two: a load of a third unloads
    the one used longest ago, told as an event with its idle time, and only that one. (The third then
    waits for the locked store: starting a real worker is the end-to-end test's.)"""
    registry, supervisor, residency, events, clock = _parts(tmp_path, _budget_for(2.5), ("a", "b", "c"))
    await residency.start()
    for worker in supervisor.workers.values():
        worker.state = WorkerState.READY
    told = events.subscribe()
    first = asyncio.ensure_future(anext(told))
    await asyncio.sleep(0)  # subscribed from here on
    a, b = registry.models.serving("a"), registry.models.serving("b")
    for model in (b, a):  # b first: a is the more recent
        clock.now += 10
        worker, waited = await residency.ensure(model)
        assert (worker, waited) == (supervisor.workers[model.name], 0.0)
        residency.release(model.name)
    clock.now += 5
    with pytest.raises(EngineUnavailableError, match="waits for the store to be unlocked"):
        await residency.ensure(registry.models.serving("c"))
    assert list(supervisor.workers) == ["a", "c"]
    kinds = [(await first).kind, *[(await anext(told)).kind for _ in range(2)]]
    assert kinds == ["model.loading", "model.unloaded", "model.load_failed"]
    unloads = [e for e in registry.audit.recent(50) if e.action == "models.unload"]
    assert [(e.target, e.detail) for e in unloads] == [("b", "evicted: unloaded to make room for c")]
    await residency.close()


async def test_a_busy_or_pinned_model_is_never_unloaded(tmp_path: Path) -> None:
    """A model with a request let through is not unloaded by an admin (409) nor evicted; pinned models that
    hold the room refuse the load at once, naming them."""
    registry, supervisor, residency, _, _ = _parts(tmp_path, _budget_for(1.5), ("a", "b"))
    await residency.start()
    supervisor.workers["a"].state = WorkerState.READY
    await residency.ensure(registry.models.serving("a"))
    with pytest.raises(ModelBusyError, match="answering 1 request"):
        await residency.unload("a")
    residency.release("a")
    registry.models.set_keep_alive("a", -1)
    residency.sync(registry.models.enabled())
    with pytest.raises(PinnedOutError) as raised:
        await residency.ensure(registry.models.serving("b"))
    assert "does not fit beside the pinned model(s) a" in raised.value.message
    assert raised.value.retry_after_s is None
    assert list(supervisor.workers) == ["a"]
    registry.models.set_keep_alive("a", None)
    residency.sync(registry.models.enabled())
    await residency.unload("a")
    assert supervisor.workers == {}
    await residency.unload("a")  # cold: nothing to do
    with pytest.raises(ModelNotFoundError):
        await residency.unload("never-registered")
    await residency.close()
