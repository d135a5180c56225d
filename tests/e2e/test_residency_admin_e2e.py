"""Admin control of residency end to end: one real appliance with two real models (SmolLM2 as
`smollm2-135m`, Gemma as `gemma`), real workers, the real `appliance` CLI in its own process. The admin API
loads and unloads (answering with the figures), refuses to unload a model answering a stream (409
model_busy) and names an unknown model 404; `GET /admin/events` tells the loads, unloads and a CLI
`models disable`; `appliance models load|unload|ps|pin|unpin` do the same from a shell, one line and a
non-zero exit for a bad name or a stopped gateway; `appliance plan` explains what fits together."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.event_tail import EventTail
from tests.e2e.server import APPLIANCE, RunningAppliance, cli, free_port, serve

GEMMA = Path(__file__).resolve().parents[2] / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
SMOL = "smollm2-135m"
SETTINGS = """
[server]
host = "127.0.0.1"
port = {port}
[workers]
threads = 1
context_length = 2048
parallel = 2
[residency]
max_loaded = 2
keep_alive_s = 600
"""
"""Both models fit (max 2) and stay loaded for the tests' length unless unloaded on purpose."""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """One appliance for the module, with both models registered and an admin key in a file."""
    if not GEMMA.is_file():
        pytest.fail(f"{GEMMA} is missing: run ./build.sh test, which fetches it")
    home = tmp_path_factory.mktemp("residency-admin") / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.format(port=port))
    cli(home, "models", "add", str(model_path), "--name", SMOL, "--alias", "default")
    cli(home, "models", "add", str(GEMMA), "--name", "gemma")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    (home / "admin.key").write_text(admin)
    appliance = serve(home, port, admin, user)
    yield appliance
    appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log


def _admin(running: RunningAppliance, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method, f"{running.base_url}{path}", headers=running.headers(running.admin_key), timeout=300
    )


def _residency(running: RunningAppliance) -> dict[str, dict[str, Any]]:
    answer = _admin(running, "GET", "/admin/residency")
    assert answer.status_code == 200, answer.text
    return {model["name"]: model for model in answer.json()["data"]}


def _appliance(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with the admin key file; its exit status is the caller's to check."""
    environment = os.environ | {"APPLIANCE_HOME": str(home)}
    environment.pop("APPLIANCE_ADMIN_KEY", None)
    key = ("--key-file", str(home / "admin.key")) if args[1] in ("load", "unload", "ps") else ()
    return subprocess.run(
        [APPLIANCE, *args, *key], env=environment, capture_output=True, text=True, check=False, timeout=300
    )


def test_admin_api_load_and_unload_are_told_on_the_event_stream(running: RunningAppliance) -> None:
    """Both models fit, so the gateway loaded both at start: unloading tells model.unloaded (reason
    admin) and leaves it cold; loading answers with the load's time and memory once loaded, the stream
    telling model.loading and model.loaded; a second load waits for nothing."""
    with EventTail(running.base_url, running.admin_key) as tail:
        assert tail.headers["content-type"].startswith("text/event-stream")
        assert _residency(running)["gemma"]["state"] == "loaded"
        first = _admin(running, "POST", "/admin/models/gemma/unload")
        assert first.status_code == 200, first.text
        assert first.json() == {"name": "gemma", "state": "cold"}
        tail.wait_for("model.unloaded", model="gemma", reason="admin")
        loaded = _admin(running, "POST", "/admin/models/gemma/load")
        assert loaded.status_code == 200, loaded.text
        body = loaded.json()
        assert body["name"] == "gemma"
        assert body["load_ms"] > 0
        assert body["memory_bytes"] > GEMMA.stat().st_size  # weights plus KV cache and overhead
        tail.wait_for("model.loading", model="gemma")
        told = tail.wait_for("model.loaded", model="gemma")
        assert told["memory_bytes"] == body["memory_bytes"]
        assert _residency(running)["gemma"]["state"] == "loaded"

        again = _admin(running, "POST", "/admin/models/gemma/load")
        assert again.json()["load_ms"] == 0  # already loaded: nothing waited

        unloaded = _admin(running, "POST", "/admin/models/gemma/unload")
        assert unloaded.status_code == 200, unloaded.text
        tail.wait_for("model.unloaded", model="gemma", reason="admin")
        assert _residency(running)["gemma"]["state"] == "cold"


def test_an_unknown_model_is_404_and_a_busy_one_is_not_unloaded(running: RunningAppliance) -> None:
    """A name never registered: 404 for load and unload. A model answering a stream: 409 model_busy, and
    the stream finishes."""
    for action in ("load", "unload"):
        missing = _admin(running, "POST", f"/admin/models/nope/{action}")
        assert missing.status_code == 404, missing.text
    assert _admin(running, "POST", f"/admin/models/{SMOL}/load").status_code == 200
    streaming = threading.Event()
    finished: list[str] = []

    def stream() -> None:
        body = {"model": SMOL, "prompt": "1, 2, 3,", "max_tokens": 150, "temperature": 0, "stream": True}
        with httpx.stream(
            "POST", f"{running.base_url}/v1/completions", json=body, headers=running.headers(), timeout=300
        ) as answer:
            for line in answer.iter_lines():
                streaming.set()
                if line == "data: [DONE]":
                    finished.append(line)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert streaming.wait(120), "the stream never started"
        busy = _admin(running, "POST", f"/admin/models/{SMOL}/unload")
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"]["code"] == "model_busy"
    finally:
        thread.join(timeout=300)
    assert finished == ["data: [DONE]"]


def test_cli_disable_is_told_as_model_disabled(running: RunningAppliance) -> None:
    """`appliance models disable` in another process: the stream tells model.disabled; enabling tells
    model.enabled."""
    with EventTail(running.base_url, running.admin_key) as tail:
        cli(running.home, "models", "disable", "gemma")
        assert tail.wait_for("model.disabled", within_s=10, model="gemma")["status"] == "disabled"
        cli(running.home, "models", "enable", "gemma")
        tail.wait_for("model.enabled", within_s=10, model="gemma")


def test_cli_load_ps_pin_unpin_unload(running: RunningAppliance) -> None:
    """The shell's way: load prints the time and memory; ps lists both models with state, memory and
    expiry and ends with the budget; pin shows as pinned; unpin brings an expiry back; unload frees it."""
    loaded = _appliance(running.home, "models", "load", "gemma")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("gemma ")
    assert "GiB" in loaded.stdout

    listed = _appliance(running.home, "models", "ps")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "VERSION", "STATE"]
    gemma = next(line for line in lines if line.startswith("gemma "))
    assert " idle " in gemma
    assert "from now" in gemma
    assert lines[-1].startswith("RAM budget ")
    assert lines[-1].endswith("of max 2 loaded")

    assert _appliance(running.home, "models", "pin", "gemma").returncode == 0
    assert _residency_within(running, "gemma", pinned=True)
    pinned = _appliance(running.home, "models", "ps").stdout
    assert next(line for line in pinned.splitlines() if line.startswith("gemma ")).endswith("pinned")
    assert _appliance(running.home, "models", "unpin", "gemma").returncode == 0
    assert _residency_within(running, "gemma", pinned=False)

    unloaded = _appliance(running.home, "models", "unload", "gemma")
    assert unloaded.returncode == 0, unloaded.stderr
    assert _residency(running)["gemma"]["state"] == "cold"


def _residency_within(running: RunningAppliance, name: str, **wanted: Any) -> bool:
    """Whether the model's residency shows `wanted` within a few seconds (the registry is read live)."""
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        model = _residency(running)[name]
        if all(model.get(k) == v for k, v in wanted.items()):
            return True
        time.sleep(0.1)
    return False


def test_cli_refusals_are_one_line_and_fail(running: RunningAppliance, tmp_path: Path) -> None:
    """A bad name, and a home whose gateway is not running: the reason on one line of stderr (after
    `load`'s progress line), exit status 1, nothing on stdout."""
    for command in ("load", "unload", "pin"):
        refused = _appliance(running.home, "models", command, "nope")
        assert refused.returncode == 1, refused
        assert refused.stdout == ""
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert errors == [refused.stderr.strip().splitlines()[-1]]
        assert "`nope` does not exist" in errors[0]
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "settings.toml").write_text(f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    (stopped / "admin.key").write_text(running.admin_key)
    down = _appliance(stopped, "models", "ps")
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the gateway")
    assert len(down.stderr.strip().splitlines()) == 1


def test_plan_explains_what_fits_together(running: RunningAppliance) -> None:
    """`appliance plan` ends with the residency: both models fit together under max_loaded 2."""
    planned = cli(running.home, "plan")
    residency = planned[planned.index("Residency:") :].splitlines()
    assert residency[0].endswith("at most 2 loaded at once")
    assert residency[1].startswith(f"  fit together: {SMOL} (")
    assert "gemma (" in residency[1]
