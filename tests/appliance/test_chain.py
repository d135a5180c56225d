"""Circuit breakers on an injected clock; routes from settings and from the registry; the canned engine."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from appliance.breaker import BreakerState, CircuitBreaker
from appliance.chain import Chains
from appliance.engines.canned import canned_body, canned_events
from appliance.errors import InvalidRequestError, ModelNotFoundError, SettingsError
from appliance.gguf_info import read_gguf_info
from appliance.registry.registry import Registry, open_registry
from appliance.settings import load_settings


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so that mypy does not keep a narrowed value across calls."""
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    """A clock at t=1000."""
    return FakeClock()


def test_breaker_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    """Two failures of three leave it closed; a success resets the count; three in a row open it."""
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.acquire()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.acquire()
    assert not breaker.would_allow()


def test_breaker_half_opens_after_cooldown_with_one_trial(clock: FakeClock) -> None:
    """After the cooldown exactly one trial passes; its failure re-opens for a full cooldown."""
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 9.9
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 0.1
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire(), "a second request must wait for the trial's outcome"
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 10.0
    assert breaker.acquire()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.acquire()
    assert breaker.acquire()


def test_breaker_trial_released_by_client_error(clock: FakeClock) -> None:
    """A trial that ends in the client's own error frees the trial slot without closing or opening."""
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.acquire()
    breaker.release()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire()


def test_probe_opens_and_closes_at_once(clock: FakeClock) -> None:
    """A failed probe opens a closed circuit; a passed probe closes it before the cooldown ends."""
    breaker = CircuitBreaker(5, 60.0, clock)
    breaker.probe_failed()
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.opened_count == 1
    breaker.probe_failed()
    assert breaker.opened_count == 1, "staying open is not a new opening"
    breaker.probe_passed()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED, "the count started over"


@pytest.fixture
def registry(tmp_path: Path, model_path: Path) -> Registry:
    """A migrated registry with the real SmolLM2 file under two names."""
    registry = open_registry(tmp_path / "registry.db")
    info = read_gguf_info(model_path)
    registry.models.add(model_path, info, name="primary", aliases=("p",))
    registry.models.add(model_path, info, name="backup")
    return registry


def test_routes_from_settings_resolve_and_plain_names_keep_working(
    appliance_home: Path, registry: Registry, clock: FakeClock
) -> None:
    """A route resolves to its links; a model name or alias is a one-link chain; unknown names are 404."""
    appliance_home.mkdir(parents=True, exist_ok=True)
    (appliance_home / "settings.toml").write_text(
        '[routes.default]\nlinks = ["primary", "backup"]\ncanned = "Sorry."\n'
        "[fallback]\nfailure_threshold = 2\n"
    )
    settings = load_settings(appliance_home)
    chains = Chains(settings, registry, clock)
    route = chains.resolve("default")
    assert (route.links, route.canned, route.is_route) == (("primary", "backup"), "Sorry.", True)
    plain = chains.resolve("p")
    assert (plain.links, plain.canned, plain.is_route) == (("primary",), None, False)
    with pytest.raises(ModelNotFoundError):
        chains.resolve("nope")
    chains.link_failed("primary")
    assert chains.breaker("primary").state is BreakerState.CLOSED
    chains.link_failed("primary")
    assert chains.breaker("primary").state is BreakerState.OPEN, "threshold 2 from settings"


def test_unknown_route_key_is_a_settings_error(appliance_home: Path) -> None:
    """A typo inside a route section is refused with its key."""
    appliance_home.mkdir(parents=True, exist_ok=True)
    (appliance_home / "settings.toml").write_text('[routes.default]\nlink = ["a"]\n')
    with pytest.raises(SettingsError, match=r"unknown key `routes\[\.\.\.\]\.link`"):
        load_settings(appliance_home)


def test_route_edits_persist_and_override_settings(
    appliance_home: Path, registry: Registry, tmp_path: Path, clock: FakeClock
) -> None:
    """set_route stores canonical names in the registry; a new Chains (a restart) reads them back."""
    appliance_home.mkdir(parents=True, exist_ok=True)
    (appliance_home / "settings.toml").write_text('[routes.default]\nlinks = ["primary"]\n')
    settings = load_settings(appliance_home)
    chains = Chains(settings, registry, clock)
    chains.set_route("default", ["backup", "p"], None)
    restarted = Chains(settings, open_registry(tmp_path / "registry.db"), clock)
    assert restarted.resolve("default").links == ("backup", "primary")
    assert restarted.resolve("default").canned is None
    with sqlite3.connect(tmp_path / "registry.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("0008",)]


@pytest.mark.parametrize(
    ("links", "canned", "param"),
    [
        ([], None, "links"),
        (["primary", "p"], None, "links"),
        (["ghost"], None, "links"),
        (["primary"], "", "canned"),
    ],
)
def test_bad_routes_are_refused_and_not_stored(
    appliance_home: Path,
    registry: Registry,
    clock: FakeClock,
    links: list[str],
    canned: str | None,
    param: str,
) -> None:
    """No links and no canned, a duplicate link, an unknown model, an empty canned text: 400, nothing kept."""
    chains = Chains(load_settings(appliance_home), registry, clock)
    with pytest.raises(InvalidRequestError) as caught:
        chains.set_route("r", links, canned)
    assert caught.value.param == param
    assert registry.routes.list() == []
    assert "r" not in chains.routes


def test_canned_answers_have_finish_reason_stop() -> None:
    """The canned engine answers chat and completions, streamed or not, with the text and `stop`."""
    chat = msgspec.json.decode(canned_body("Busy.", chat=True))
    assert chat["choices"][0]["message"]["content"] == "Busy."
    assert chat["choices"][0]["finish_reason"] == "stop"
    text = msgspec.json.decode(canned_body("Busy.", chat=False))
    assert (text["object"], text["choices"][0]["text"]) == ("text_completion", "Busy.")
    events = canned_events("Busy.", chat=True, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [msgspec.json.decode(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Busy."}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[2]["usage"]["total_tokens"] == 0
