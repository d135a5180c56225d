"""Registry changes become events for the console: LiveModels over a real registry publishes
model.added, model.disabled, model.enabled and model.removed once each, whoever made the change."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.hardware import Hardware
from appliance.planner import Plan
from appliance.registry.models import ModelInfo
from appliance.registry.registry import open_registry
from appliance.serving.events import Event, Events
from appliance.serving.live import LiveModels
from appliance.serving.model_changes import status_changes
from appliance.settings import Settings
from appliance.supervisor import Supervisor
from tests.appliance.serving.test_live import FAKE_GGUF


def _never(_model: ModelInfo) -> bool:
    return False  # workers are added, never started: no process runs here


def test_status_changes_names_each_added_removed_enabled_and_disabled_model() -> None:
    """One entry per changed name; unchanged names give none; removed ones come last."""
    before = {"a": "enabled", "b": "enabled", "c": "disabled", "gone": "enabled"}
    after = {"a": "enabled", "b": "disabled", "c": "enabled", "new": "disabled"}
    assert status_changes(before, after) == [
        ("model.disabled", "b", "disabled"),
        ("model.enabled", "c", "enabled"),
        ("model.added", "new", "disabled"),
        ("model.removed", "gone", "removed"),
    ]
    assert status_changes(after, after) == []


async def _drain(queue: asyncio.Queue[Event]) -> list[tuple[str, object]]:
    await asyncio.sleep(0)
    seen: list[tuple[str, object]] = []
    while not queue.empty():
        event = queue.get_nowait()
        seen.append((event.kind, event.fields["model"]))
    return seen


async def test_live_models_publish_registry_changes_once(tmp_path: Path) -> None:
    """The first sync takes the registry as it is (no events for what was there at start); then each
    change is told once, even when sync runs again with nothing new."""
    settings = Settings(home=tmp_path)
    registry = open_registry(settings.database_path)
    registry.models.add(Path("/m/old.gguf"), FAKE_GGUF, name="old")
    events = Events()
    supervisor = Supervisor(settings, [], Plan(Hardware(), ()))
    live = LiveModels(settings, registry, supervisor, Hardware(), may_start=_never, events=events)
    queue: asyncio.Queue[Event] = asyncio.Queue()

    async def listen() -> None:
        async for event in events.subscribe():
            queue.put_nowait(event)

    listening = asyncio.create_task(listen())
    await asyncio.sleep(0)
    try:
        live.sync()
        assert await _drain(queue) == []
        registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a")
        live.sync()
        live.sync()
        assert await _drain(queue) == [("model.added", "a")]
        registry.models.set_status("a", "disabled")
        live.sync()
        registry.models.set_status("a", "enabled")
        live.sync()
        assert await _drain(queue) == [("model.disabled", "a"), ("model.enabled", "a")]
        registry.models.set_status("a", "disabled")
        registry.models.remove("a")
        live.sync()
        # Both changes happened between two looks: the console learns the outcome, not each step.
        assert await _drain(queue) == [("model.removed", "a")]
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await live.close()
