"""Models loaded within a RAM budget, end to end: one real appliance, real workers, the official `openai`
client, the CLI writing the same SQLite file.

Models: SmolLM2 three times (`smol`, `smol2`, `smol3`: the same file under three names) and Gemma-3-270M
(`gemma`). The budget is computed from their plans (`appliance plan --json`) to hold two SmolLM2 workers but
not a SmolLM2 and a Gemma worker together: alternating SmolLM2 and Gemma evicts at every switch, and a third
SmolLM2 evicts the least recently used of the two loaded ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import APPLIANCE, RunningAppliance, cli, free_port, process_alive, serve

GEMMA = Path(__file__).resolve().parents[2] / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
SMOLS = ("smol", "smol2", "smol3")
LOAD_MS = "x-model-load-ms"
BIG_BYTES = 1024**3
"""A sparse GGUF this large: with the overhead, more than the budget holds."""
SETTINGS = """
[server]
host = "127.0.0.1"
port = {port}
[workers]
threads = 1
context_length = 512
parallel = 2
kv_pool_tokens = 1024
[residency]
ram_budget_gib = {budget}
load_timeout_s = 60
keep_alive_s = 300
[routes.warm]
links = ["gemma", "smol"]
prefer_warm = true
[routes.wait]
links = ["gemma", "smol"]
"""
"""A fixed KV pool, so that a model needs the same bytes whatever else is loaded."""


@dataclass(frozen=True)
class Figures:
    """What each model needs (the plan's bytes) and the budget the appliance runs with."""

    needs: dict[str, int]
    budget_gib: float


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path
) -> Iterator[tuple[RunningAppliance, Figures]]:
    """The appliance of this module, its budget between two SmolLM2 workers and a SmolLM2 plus Gemma."""
    if not GEMMA.is_file():
        pytest.fail(f"{GEMMA} is missing: run ./build.sh test, which fetches it")
    home = tmp_path_factory.mktemp("residency") / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.format(port=port, budget=0))
    for name in SMOLS:
        cli(home, "models", "add", str(model_path), "--name", name)
    cli(home, "models", "add", str(GEMMA), "--name", "gemma")
    needs = {m["name"]: m["weights_bytes"] + m["kv_cache_bytes"] + m["overhead_bytes"] for m in _plan(home)}
    two_smols, smol_and_gemma = 2 * needs["smol"], needs["smol"] + needs["gemma"]
    assert two_smols < smol_and_gemma
    budget = (two_smols + smol_and_gemma) / 2 / 1024**3
    (home / "settings.toml").write_text(SETTINGS.format(port=port, budget=f"{budget:.4f}"))
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    appliance = serve(home, port, admin, user)
    yield appliance, Figures(needs, budget)
    appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log


@pytest.fixture
def running(served: tuple[RunningAppliance, Figures]) -> RunningAppliance:
    """The module's appliance."""
    return served[0]


@pytest.fixture
def figures(served: tuple[RunningAppliance, Figures]) -> Figures:
    """Its models' needs and its budget."""
    return served[1]


def _plan(home: Path) -> list[dict[str, Any]]:
    """`appliance plan --json`'s models: each one's weights, KV cache and overhead."""
    environment = os.environ | {"APPLIANCE_HOME": str(home)}
    done = subprocess.run(
        [APPLIANCE, "plan", "--json"], env=environment, capture_output=True, text=True, check=True
    )
    models: list[dict[str, Any]] = json.loads(done.stdout)["models"]
    return models


def _client(running: RunningAppliance) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{running.base_url}/v1", api_key=running.user_key, max_retries=0, timeout=120
    )


def _engines(running: RunningAppliance) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{running.base_url}/admin/engines", headers=running.headers(running.admin_key))
    return {engine["model"]: engine for engine in answer.json()["data"]}


def _audit(running: RunningAppliance, action: str) -> list[dict[str, Any]]:
    """The audit rows of `action`, oldest first."""
    answer = httpx.get(
        f"{running.base_url}/admin/audit", params={"limit": 500}, headers=running.headers(running.admin_key)
    )
    return [e for e in reversed(answer.json()["data"]) if e["action"] == action]


def _metric(running: RunningAppliance, line_start: str) -> float:
    text = httpx.get(f"{running.base_url}/metrics", headers=running.headers()).text
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def _complete(running: RunningAppliance, model: str) -> tuple[str, str, httpx.Headers]:
    """A completion through the `openai` client: its text, the model that answered, the headers."""
    raw = _client(running).completions.with_raw_response.create(
        model=model, prompt="The capital of France is", max_tokens=3, temperature=0
    )
    completion = raw.parse()
    return completion.choices[0].text, completion.model, raw.headers


def _post(running: RunningAppliance, model: str) -> httpx.Response:
    return httpx.post(
        f"{running.base_url}/v1/completions",
        json={"model": model, "prompt": "Hello", "max_tokens": 2},
        headers=running.headers(),
        timeout=120,
    )


def _until(what: str, check: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {within_s:g} s"
        time.sleep(0.1)


def test_start_loads_what_fits_in_registry_order(running: RunningAppliance, figures: Figures) -> None:
    """At start the first two SmolLM2 fit the budget together; the third and Gemma are cold, and the node
    is ready (cold is servable)."""
    assert set(_engines(running)) == {"smol", "smol2"}
    ready = httpx.get(f"{running.base_url}/health/ready", headers=running.headers())
    assert ready.status_code == 200
    assert "not_started" not in ready.json()
    budget = _metric(running, "appliance_residency_ram_budget_bytes")
    assert budget == pytest.approx(figures.budget_gib * 1024**3, rel=1e-3)
    used = _metric(running, "appliance_residency_ram_used_bytes")
    assert used == 2 * figures.needs["smol"]
    text, _, headers = _complete(running, "smol")
    assert text
    assert LOAD_MS not in headers, "warm: no load waited for"


def test_alternating_two_models_that_do_not_fit_together(running: RunningAppliance) -> None:
    """SmolLM2 and Gemma in turn, six requests: every one answers, the one that switched says how long it
    waited for the load, and the two are never loaded at once (sampled from the engines list throughout)."""
    together: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(headers=running.headers(running.admin_key)) as http:
            while not stop.is_set():
                listed = {e["model"] for e in http.get(f"{running.base_url}/admin/engines").json()["data"]}
                if {"smol", "gemma"} <= listed:
                    together.append(listed)
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for model in ("gemma", "smol", "gemma", "smol", "gemma", "smol"):
            text, answered, headers = _complete(running, model)
            assert text
            assert answered == model
            assert int(headers.get(LOAD_MS, "0")) > 0, f"{model} was cold: the wait is told"
            assert LOAD_MS not in _complete(running, model)[2]
    finally:
        stop.set()
        watcher.join()
    assert together == []
    assert _metric(running, 'appliance_model_loads_total{model="gemma",outcome="success"}') == 3
    assert _metric(running, 'appliance_model_unloads_total{model="gemma",reason="evicted"}') == 3
    assert _metric(running, 'appliance_model_load_seconds_count{model="gemma"}') == 3


def test_eviction_unloads_the_least_recently_used(running: RunningAppliance) -> None:
    """smol2 then smol used (smol2 now the least recent); smol3 needs room for one: smol2 is unloaded,
    smol keeps its worker (same pid)."""
    _complete(running, "smol2")
    _complete(running, "smol")
    assert set(_engines(running)) == {"smol", "smol2"}
    smol_pid = _engines(running)["smol"]["pid"]
    smol2_pid = _engines(running)["smol2"]["pid"]
    assert int(_complete(running, "smol3")[2][LOAD_MS]) > 0
    engines = _engines(running)
    assert set(engines) == {"smol", "smol3"}
    assert engines["smol"]["pid"] == smol_pid
    assert not process_alive(smol2_pid)
    last = _audit(running, "models.unload")[-1]
    assert (last["target"], last["detail"]) == ("smol2", "evicted: unloaded to make room for smol3")


def test_a_pinned_model_is_never_evicted(running: RunningAppliance) -> None:
    """smol pinned (`models set --keep-alive -1`): Gemma, which only fits without it, is refused at once
    with a 503 that names the pinned model, and smol keeps serving on the same worker; unpinned, Gemma
    loads (smol is evicted)."""
    _complete(running, "smol")
    out = cli(running.home, "models", "set", "smol", "--keep-alive", "-1")
    assert out.strip() == "smol: keep-alive pinned (as set)"
    time.sleep(0.6)  # the gateway reads the change within a poll
    pid = _engines(running)["smol"]["pid"]
    started = time.monotonic()
    refused = _post(running, "gemma")
    assert time.monotonic() - started < 5, "refused at once, not after the load timeout"
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "pinned_models_hold_room"
    assert error["message"].startswith("The model `gemma` does not fit beside the pinned model(s) smol:")
    assert "retry-after" not in refused.headers
    assert _engines(running)["smol"]["pid"] == pid
    assert _complete(running, "smol")[0]
    cli(running.home, "models", "set", "smol", "--keep-alive", "default")
    time.sleep(0.6)
    assert _complete(running, "gemma")[0]
    assert "smol" not in _engines(running)


def test_prefer_warm_skips_a_cold_first_link_and_a_plain_route_waits(running: RunningAppliance) -> None:
    """Route `warm` (gemma → smol, prefer_warm): with gemma cold and smol loaded, smol answers and the skip
    says `cold`; route `wait` (same links) waits for gemma's load instead."""
    _complete(running, "smol")  # evicts gemma
    assert "gemma" not in _engines(running)
    raw = _client(running).completions.with_raw_response.create(model="warm", prompt="Hi", max_tokens=2)
    assert raw.headers["x-served-model"] == "smol"
    assert raw.headers["x-fallback-skipped-reasons"] == "gemma=cold"
    assert LOAD_MS not in raw.headers
    waited = _client(running).completions.with_raw_response.create(model="wait", prompt="Hi", max_tokens=2)
    assert waited.headers["x-served-model"] == "gemma"
    assert int(waited.headers[LOAD_MS]) > 0
    failovers = 'appliance_failovers_total{route="warm",model="gemma",reason="cold"}'
    assert _metric(running, failovers) == 1


def test_a_model_larger_than_the_budget_is_refused_with_the_figures(
    running: RunningAppliance, figures: Figures
) -> None:
    """A 1 GiB GGUF (Gemma's file, sparse past its tensors) registered while serving: refused with what it
    needs and what the budget holds, in /health/ready's not_started, and a 503 that says so."""
    big = running.home / "big.gguf"
    shutil.copyfile(GEMMA, big)
    os.truncate(big, BIG_BYTES)
    cli(running.home, "models", "add", str(big), "--name", "big")
    _until("the refusal", lambda: "big" in _ready(running).get("not_started", {}), 10)
    reason = _ready(running)["not_started"]["big"]
    budget = figures.budget_gib
    assert reason.startswith("big needs 1.5")
    assert "(weights 1.00, KV 0.0" in reason
    assert reason.endswith(f"overhead 0.50); the RAM budget holds {budget:.2f} GiB")
    answer = _post(running, "big")
    assert answer.status_code == 503
    assert answer.json()["error"] == {
        "message": f"The model `big` cannot be loaded here: {reason}.",
        "type": "server_error",
        "param": None,
        "code": "model_exceeds_budget",
    }
    assert "retry-after" not in answer.headers
    assert _post(running, "smol").status_code == 200
    cli(running.home, "models", "remove", "big")


def _ready(running: RunningAppliance) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{running.base_url}/health/ready", headers=running.headers()).json()
    return body


def test_a_corrupt_model_answers_a_clear_error_and_the_others_serve(running: RunningAppliance) -> None:
    """A GGUF cut short after it was registered: its load fails with the worker's exit as the reason, once
    per request (no restart loop), and the other models keep answering."""
    broken = running.home / "broken.gguf"
    shutil.copyfile(GEMMA, broken)
    cli(running.home, "models", "add", str(broken), "--name", "broken", "--disabled")
    with broken.open("r+b") as damaged:
        damaged.truncate(broken.stat().st_size // 2)
    cli(running.home, "models", "enable", "broken")
    for attempt in (1, 2):
        answer = _post(running, "broken")
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "model_load_failed"
        assert error["message"].startswith(
            "The model `broken` could not be loaded: its worker exited before it was ready ("
        )
        assert _metric(running, 'appliance_model_loads_total{model="broken",outcome="failure"}') == attempt
        assert "broken" not in _engines(running)
        assert _complete(running, "smol")[0], "the others serve on"
    time.sleep(2)
    assert _metric(running, 'appliance_model_loads_total{model="broken",outcome="failure"}') == 2
    failed = [e for e in _audit(running, "models.load") if e["target"] == "broken"]
    assert [e["outcome"] for e in failed] == ["failure", "failure"]
    cli(running.home, "models", "remove", "broken")


def test_a_short_keep_alive_unloads_the_idle_model_and_the_next_request_loads_it(
    running: RunningAppliance,
) -> None:
    """keep-alive 2 s on smol2: loaded by a request, its worker exits about 2 s after it, and the next
    request (streamed) loads it again and says how long it waited."""
    cli(running.home, "models", "set", "smol2", "--keep-alive", "2s")
    time.sleep(0.6)
    _complete(running, "smol2")
    pid = _engines(running)["smol2"]["pid"]
    finished = time.monotonic()
    _until("the idle model's worker exits", lambda: not process_alive(pid), 15)
    assert time.monotonic() - finished >= 1.5, "not before its keep-alive"
    assert "smol2" not in _engines(running)
    last = _audit(running, "models.unload")[-1]
    assert last["target"] == "smol2"
    assert last["detail"].startswith("idle: ")
    stream = _client(running).chat.completions.with_raw_response.create(
        model="smol2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
    )
    assert int(stream.headers[LOAD_MS]) > 0
    chunks = list(stream.parse())
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert _metric(running, 'appliance_model_unloads_total{model="smol2",reason="idle"}') == 1
