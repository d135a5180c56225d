"""SIGTERM drains: no new connections, running streams finish (or are cut cleanly at the deadline), exit 0.

The worker is paused (SIGSTOP) right after the stream's first event, so the stream is certainly still running
when SIGTERM arrives, whatever the speed of this machine; SIGCONT lets it go on.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.e2e.server import RunningAppliance, cli, free_port, serve

LONG_REQUEST = {
    "model": "default",
    "prompt": "Once upon a time",
    "max_tokens": 200,
    "temperature": 0,
    "stream": True,
    # No end-of-text tokens: the stream runs to max_tokens, so it cannot end early on its own.
    "logit_bias": {"0": -100, "2": -100},
}


def _start(home: Path, model: Path, drain_timeout_s: float) -> RunningAppliance:
    """An appliance whose [server] section sets the drain timeout."""
    port = free_port()
    home.mkdir(parents=True)
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndrain_timeout_s = {drain_timeout_s}\n'
        "[workers]\nthreads = 2\ncontext_length = 2048\nparallel = 1\n"
    )
    cli(home, "models", "add", str(model), "--name", "smollm2-135m", "--alias", "default")
    admin_key = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user_key = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    return serve(home, port, admin_key, user_key)


def _worker_pid(appliance: RunningAppliance) -> int:
    engines = httpx.get(f"{appliance.base_url}/admin/engines", headers=appliance.headers(appliance.admin_key))
    pid: int = engines.json()["data"][0]["pid"]
    return pid


def _events(lines: Iterator[str]) -> Iterator[str]:
    """The data of each SSE event."""
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def _refuses_connections(appliance: RunningAppliance) -> bool:
    """Whether the gateway's port refuses new connections (within a few seconds of SIGTERM)."""
    for _ in range(100):
        try:
            httpx.get(f"{appliance.base_url}/health/live", timeout=2)
        except httpx.ConnectError:
            return True
        time.sleep(0.05)
    return False


def _sigterm_mid_stream(appliance: RunningAppliance) -> tuple[list[str], bool]:
    """Open a long stream, pause the worker after its first event, SIGTERM the gateway, check that new
    connections are refused, resume the worker, and return every event's data and the refusal."""
    worker = _worker_pid(appliance)
    url = f"{appliance.base_url}/v1/completions"
    with httpx.stream("POST", url, json=LONG_REQUEST, headers=appliance.headers(), timeout=120) as reply:
        assert reply.status_code == 200
        events = _events(reply.iter_lines())
        received = [next(events)]
        os.kill(worker, signal.SIGSTOP)
        try:
            appliance.process.send_signal(signal.SIGTERM)
            refused = _refuses_connections(appliance)
        finally:
            os.kill(worker, signal.SIGCONT)
        received.extend(events)
    return received, refused


def test_sigterm_lets_a_running_stream_finish_then_exits_0(tmp_path: Path, model_path: Path) -> None:
    """A stream in flight at SIGTERM completes with finish_reason and [DONE]; then the process exits 0."""
    appliance = _start(tmp_path / "home", model_path, drain_timeout_s=120)
    try:
        received, refused = _sigterm_mid_stream(appliance)
        assert refused, "the gateway still accepted connections while draining"
        assert received[-1] == "[DONE]"
        chunks = [json.loads(data) for data in received[:-1]]
        assert all("error" not in chunk for chunk in chunks), received
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(chunk["choices"][0]["text"] for chunk in chunks).strip()
        assert appliance.process.wait(timeout=60) == 0
    finally:
        appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log
    assert "Application shutdown complete" in appliance.log
    assert list((appliance.home / "run").glob("*.sock")) == []


def test_a_stream_longer_than_the_drain_timeout_is_cut_with_an_error_event(
    tmp_path: Path, model_path: Path
) -> None:
    """Drain timeout 1 s and a stream of 1,500 tokens still running: the client gets an error event and
    [DONE] instead of a truncated body, and the gateway exits 0."""
    appliance = _start(tmp_path / "home", model_path, drain_timeout_s=1)
    url = f"{appliance.base_url}/v1/completions"
    try:
        body = {**LONG_REQUEST, "max_tokens": 1500}
        with httpx.stream("POST", url, json=body, headers=appliance.headers(), timeout=120) as reply:
            events = _events(reply.iter_lines())
            first = next(events)
            appliance.process.send_signal(signal.SIGTERM)
            rest = list(events)
        assert "error" not in json.loads(first)
        assert rest[-1] == "[DONE]"
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "engine_unavailable"
        assert "drain timeout" in error["message"]
        assert appliance.process.wait(timeout=60) == 0
    finally:
        appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log
