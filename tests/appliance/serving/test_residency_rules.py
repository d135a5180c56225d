"""The pure rules of residency: keep-alive durations and expiry, which idle model is evicted first, and
what a refusal says (no process, no registry)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import InvalidRequestError, SettingsError
from appliance.hardware import MIB
from appliance.planner import GIB, ModelPlan
from appliance.registry.models import ModelInfo
from appliance.serving.residency_rules import (
    Candidate,
    choose_victim,
    exceeds_budget_message,
    expired,
    keep_alive_of,
)
from appliance.settings import load_settings
from appliance.settings_residency import (
    PINNED,
    ResidencySettings,
    describe_keep_alive,
    parse_keep_alive,
)
from tests.appliance.serving.test_live import FAKE_GGUF


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("10m", 600.0), ("1h", 3600.0), ("300", 300.0), ("2.5s", 2.5),
     ("-1", PINNED), ("0", 0.0), (" 5M ", 300.0), ("default", None)],
)  # fmt: skip
def test_keep_alive_durations_parse_to_seconds(text: str, seconds: float | None) -> None:
    """Durations like Ollama's keep_alive, plain seconds, -1 for pinned, and `default` for the setting."""
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "5d", "ten", "1h30m", "-1s"])
def test_a_keep_alive_that_is_no_duration_is_refused_naming_the_forms(text: str) -> None:
    """Anything else is a 400 that says what is accepted."""
    with pytest.raises(InvalidRequestError, match="30s, 5m or 1h") as raised:
        parse_keep_alive(text)
    assert raised.value.param == "keep_alive"


def test_keep_alive_is_described_as_a_person_reads_it() -> None:
    """What `models set` echoes."""
    assert [describe_keep_alive(s) for s in (-1, 0, 300, 3600, 90, 2.5)] == [
        "pinned", "unload after each request", "5m", "1h", "90s", "2.5s",
    ]  # fmt: skip


def test_expiry_counts_from_the_last_request_and_never_for_pinned() -> None:
    """Idle for the whole keep-alive: expired; pinned: never; 0: as soon as it is idle."""
    assert not expired(100.0, 300.0, 399.0)
    assert expired(100.0, 300.0, 400.0)
    assert expired(100.0, 0.0, 100.0)
    assert not expired(100.0, PINNED, 1e9)
    assert not expired(None, 0.0, 1e9)


def test_a_models_own_keep_alive_wins_over_the_setting() -> None:
    """NULL in the registry follows `[residency] keep_alive_s`."""
    model = ModelInfo(
        1, "a", (), "gguf", "llama", "Q4_1", Path("/m/a.gguf"), "ab" * 32, FAKE_GGUF.size_bytes, 2048,
        True, None, "enabled", 0,
    )  # fmt: skip
    rules = ResidencySettings(keep_alive_s=60)
    assert keep_alive_of(model, rules) == 60
    assert keep_alive_of(replace(model, keep_alive_s=-1), rules) == PINNED
    assert keep_alive_of(replace(model, keep_alive_s=0), rules) == 0


def _idle(
    name: str, since: float, engine: str = "llamacpp", *, busy: bool = False, pinned: bool = False
) -> Candidate:
    return Candidate(name, engine, idle=not busy, pinned=pinned, idle_since=since)


def test_the_least_recently_used_idle_unpinned_model_goes_first() -> None:
    """LRU among the idle: a busy or pinned model is never chosen, however old its last use."""
    candidates = [
        _idle("oldest-busy", 1.0, busy=True),
        _idle("oldest-pinned", 2.0, pinned=True),
        _idle("older", 3.0),
        _idle("recent", 9.0),
    ]
    assert choose_victim(candidates, "llamacpp", any_engine=False) == "older"
    assert choose_victim(candidates[:2], "llamacpp", any_engine=False) is None


def test_only_a_model_whose_unloading_makes_room_of_that_kind_is_chosen() -> None:
    """A GGUF model needs RAM: unloading a vLLM model frees a GPU, not RAM; when the count of loaded models
    is what is full, any idle model helps."""
    candidates = [_idle("on-gpu", 1.0, "vllm"), _idle("on-cpu", 5.0)]
    assert choose_victim(candidates, "llamacpp", any_engine=False) == "on-cpu"
    assert choose_victim(candidates, "vllm", any_engine=False) == "on-gpu"
    assert choose_victim(candidates, "llamacpp", any_engine=True) == "on-gpu"


def test_a_model_that_can_never_fit_says_what_it_needs_and_what_the_budget_holds() -> None:
    """The figures of the plan: total, weights, KV and overhead, against the budget."""
    plan = ModelPlan(
        "SmolLM2", "llamacpp", False, "", format="gguf", weights_bytes=100 * MIB,
        kv_cache_bytes=200 * MIB, overhead_bytes=512 * MIB,
    )  # fmt: skip
    assert exceeds_budget_message("SmolLM2", plan, GIB // 2) == (
        "SmolLM2 needs 0.79 GiB (weights 0.10, KV 0.20, overhead 0.50); the RAM budget holds 0.50 GiB"
    )


def test_residency_settings_are_read_from_the_file(appliance_home: Path) -> None:
    """`[residency]` in settings.toml; an impossible value is refused when the file is read."""
    home = appliance_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(
        "[residency]\nram_budget_gib = 1.5\nmax_loaded = 2\nkeep_alive_s = -1\nload_timeout_s = 30\n"
    )
    rules = load_settings(home).residency
    assert (rules.ram_budget_bytes, rules.max_loaded, rules.keep_alive_s) == (int(1.5 * GIB), 2, PINNED)
    assert load_settings(home).residency.load_timeout_s == 30
    (home / "settings.toml").write_text("[residency]\nkeep_alive_s = -3\n")
    with pytest.raises(SettingsError, match="keep_alive"):
        load_settings(home)
