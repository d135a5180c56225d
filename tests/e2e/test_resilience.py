"""A worker killed with SIGKILL is restarted; a client gone mid-stream stops generation in the worker."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx

from appliance.settings import FallbackSettings
from tests.e2e.server import RunningAppliance

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def _worker_counters(appliance: RunningAppliance) -> dict[str, float]:
    """The worker's own counters, read from its metrics on its unix socket (the gateway is not involved)."""
    transport = httpx.HTTPTransport(uds=str(appliance.worker_socket()))
    with httpx.Client(transport=transport, base_url="http://worker") as worker:
        text = worker.get("/metrics").text
    return {name: float(value) for name, value in re.findall(r"^(\w+) ([0-9.e+]+)$", text, re.MULTILINE)}


def _engine(appliance: RunningAppliance) -> dict[str, object]:
    engines = httpx.get(f"{appliance.base_url}/admin/engines", headers=appliance.headers(appliance.admin_key))
    engine: dict[str, object] = engines.json()["data"][0]
    return engine


def test_killed_worker_is_reported_and_restarted(appliance: RunningAppliance, client: httpx.Client) -> None:
    """kill -9 of the worker: not ready, then restarted by the supervisor, then serving again."""
    before = _engine(appliance)
    assert before["state"] == "ready"
    assert isinstance(before["pid"], int)
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    seen_not_ready = False
    while time.monotonic() < deadline and not seen_not_ready:
        ready = client.get("/health/ready")
        seen_not_ready = ready.status_code == 503
    assert seen_not_ready, "readiness never reported the dead worker"
    assert ready.json()["engines"]["smollm2-135m"] in {"restarting", "starting"}
    during = client.post("/v1/chat/completions", json=CHAT)
    assert during.status_code in {200, 503}
    if during.status_code == 503:
        assert during.json()["error"]["code"] == "engine_unavailable"
        assert during.headers["retry-after"]
    appliance.wait_ready(timeout_s=60)
    after = _engine(appliance)
    assert after["pid"] != before["pid"]
    assert after["restarts"] == int(str(before["restarts"])) + 1
    assert "SIGKILL" in str(after["last_exit"])
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    metrics = client.get("/metrics").text
    assert re.search(r'appliance_worker_restarts_total\{model="smollm2-135m"\} [1-9]', metrics)


def test_disconnect_mid_stream_stops_the_worker(appliance: RunningAppliance) -> None:
    """Closing a stream after a few chunks cancels the generation in the worker within a token or two."""
    appliance.wait_ready()
    before = _worker_counters(appliance)
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with (
        httpx.Client(base_url=appliance.base_url, headers=appliance.headers(), timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        received = 0
        for line in response.iter_lines():
            received += line.startswith("data: ")
            if received >= 6:
                break
    # The worker sends a few tokens per event (text goes out at most every 25 ms), so what the client read
    # says little about the worker's count: take the count right after the connection closed instead.
    at_close = _worker_counters(appliance)
    deadline = time.monotonic() + 10
    counters = _worker_counters(appliance)
    while time.monotonic() < deadline:
        counters = _worker_counters(appliance)
        if (
            counters["appliance_worker_generations_cancelled_total"]
            > before["appliance_worker_generations_cancelled_total"]
        ):
            break
        time.sleep(0.05)
    assert (
        counters["appliance_worker_generations_cancelled_total"]
        == before["appliance_worker_generations_cancelled_total"] + 1
    )
    after_close = (
        counters["appliance_worker_tokens_generated_total"]
        - at_close["appliance_worker_tokens_generated_total"]
    )
    # A step or two until the worker sees the closed socket, plus the 2 tokens of a deep probe that may
    # run meanwhile.
    assert after_close <= 6, f"the worker went on generating after the client left ({after_close} tokens)"
    time.sleep(0.5)
    settled = _worker_counters(appliance)
    # The gateway's deep health probe may start a tiny generation of its own meanwhile; only tokens beyond
    # those of generations started after the cancel would mean the cancelled one went on.
    started = "appliance_worker_generations_started_total"
    probes = settled[started] - counters[started]
    later = (
        settled["appliance_worker_tokens_generated_total"]
        - counters["appliance_worker_tokens_generated_total"]
    )
    assert later <= probes * FallbackSettings().probe_max_tokens, "tokens kept coming after the cancel"
