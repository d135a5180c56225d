"""LiveModels.sync over a real registry and a real supervisor whose workers are never started: which
workers a registry change adds, withdraws, refuses or updates, and what it audits (no process runs; the
end-to-end test drives real workers)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.gguf_info import GgufInfo
from appliance.hardware import Hardware
from appliance.planner import Plan
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry, open_registry
from appliance.serving.live import SERVE, WITHDRAW, LiveModels
from appliance.settings import Settings
from appliance.supervisor import Supervisor

FAKE_GGUF = GgufInfo(
    architecture="llama",
    context_length=2048,
    quantization="Q4_1",
    chat_template="{{ messages }}",
    size_bytes=1234,
    sha256="ab" * 32,
    display_name="fake",
)


def _never(_model: ModelInfo) -> bool:
    return False  # as while the store is locked: a worker is added, not started


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Registry, Supervisor, LiveModels]:
    """A registry, an empty supervisor and the follower between them."""
    settings = Settings(home=tmp_path)
    registry = open_registry(settings.database_path)
    supervisor = Supervisor(settings, [], Plan(Hardware(), ()))
    return registry, supervisor, LiveModels(settings, registry, supervisor, Hardware(), may_start=_never)


def _audited(registry: Registry, action: str) -> list[tuple[str, str, str]]:
    return [
        (e.target, e.outcome, e.detail) for e in reversed(registry.audit.recent(100)) if e.action == action
    ]


async def test_added_disabled_enabled_and_removed_models_follow_the_registry(
    parts: tuple[Registry, Supervisor, LiveModels],
) -> None:
    """An added model gets a worker; disabled it is withdrawn (and retired); enabled it comes back on a
    worker of its own; removed it is withdrawn; each step is audited once."""
    registry, supervisor, live = parts
    registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a")
    live.sync()
    first = supervisor.workers["a"]
    assert first.launch.plan.engine == "llamacpp"
    live.sync()
    assert supervisor.workers["a"] is first, "nothing changed: the same worker"
    registry.models.set_status("a", "disabled")
    live.sync()
    assert "a" not in supervisor.workers
    await asyncio.sleep(0.05)  # the retirement: idle at once, so stopped at once
    assert supervisor.retiring == ()
    registry.models.set_status("a", "enabled")
    live.sync()
    assert supervisor.workers["a"] is not first
    registry.models.remove("a")
    live.sync()
    assert supervisor.workers == {}
    assert [(t, o) for t, o, _ in _audited(registry, SERVE)] == [("a", "success"), ("a", "success")]
    withdrawn = _audited(registry, WITHDRAW)
    assert [d.split(":")[0] for _, _, d in withdrawn] == ["disabled", "removed"]
    await live.close()


async def test_a_model_that_fits_nowhere_is_refused_once_with_the_reason(
    parts: tuple[Registry, Supervisor, LiveModels],
) -> None:
    """An AWQ model on a machine without a GPU: not started, the reason in not_started and the audit, and
    not planned (nor audited) again until something changes; disabled, it leaves not_started."""
    registry, supervisor, live = parts
    registry.models.add_awq_folder(Path("/m/awq"), FAKE_GGUF, name="big")
    for _ in range(3):
        live.sync()
    assert "big" not in supervisor.workers
    assert supervisor.not_started["big"].startswith("fits nowhere")
    [(target, outcome, detail)] = _audited(registry, SERVE)
    assert (target, outcome) == ("big", "failure")
    assert detail == f"not started: {supervisor.not_started['big']}"
    registry.models.set_status("big", "disabled")
    live.sync()
    assert supervisor.not_started == {}


async def test_alias_changes_reach_the_worker_and_a_name_registered_again_gets_a_new_one(
    parts: tuple[Registry, Supervisor, LiveModels],
) -> None:
    """New aliases update the worker's model in place; a name removed and added again between two syncs
    is a new model: its old worker is withdrawn and a new one added."""
    registry, supervisor, live = parts
    registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a")
    live.sync()
    worker = supervisor.workers["a"]
    registry.models.set_aliases("a", ("fast",))
    live.sync()
    assert supervisor.workers["a"] is worker
    assert worker.model.aliases == ("fast",)
    registry.models.remove("a")
    registry.models.add(Path("/m/other.gguf"), replace(FAKE_GGUF, sha256="cd" * 32), name="a")
    live.sync()
    assert supervisor.workers["a"] is not worker
    assert supervisor.workers["a"].model.path == Path("/m/other.gguf")
    assert "removed and registered again" in _audited(registry, WITHDRAW)[0][2]
    await live.close()


async def test_a_model_the_gateway_must_not_serve_is_refused_with_its_reason(tmp_path: Path) -> None:
    """What `admit` refuses (a plain model under require_encrypted) is refused as one that does not fit."""
    settings = Settings(home=tmp_path)
    registry = open_registry(settings.database_path)
    supervisor = Supervisor(settings, [], Plan(Hardware(), ()))

    def admit(model: ModelInfo) -> None:
        raise ApplianceError(f"model {model.name!r} is not encrypted")

    live = LiveModels(settings, registry, supervisor, Hardware(), may_start=_never, admit=admit)
    registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="plain")
    live.sync()
    assert supervisor.workers == {}
    assert supervisor.not_started == {"plain": "model 'plain' is not encrypted"}
    assert _audited(registry, SERVE) == [("plain", "failure", "not started: model 'plain' is not encrypted")]
