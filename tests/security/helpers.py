"""What the security tests share: the openai client on an appliance, engine pids, a worker's counters."""

from __future__ import annotations

import httpx
import openai

from tests.e2e.server import RunningAppliance


def openai_client(appliance: RunningAppliance, timeout_s: float = 60.0) -> openai.OpenAI:
    """The official client on the gateway with the user key, no retries (a retry would hide a failure)."""
    return openai.OpenAI(
        base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0, timeout=timeout_s
    )


def engine_pids(appliance: RunningAppliance) -> dict[str, object]:
    """Each model's worker pid, as /admin/engines reports it (a worker that crashed has a new one)."""
    answer = httpx.get(
        f"{appliance.base_url}/admin/engines", headers=appliance.headers(appliance.admin_key), timeout=30
    )
    return {engine["model"]: engine["pid"] for engine in answer.json()["data"]}


def worker_counters(appliance: RunningAppliance, model: str = "smollm2-135m") -> dict[str, float]:
    """The worker's own Prometheus counters, read from its unix socket."""
    transport = httpx.HTTPTransport(uds=str(appliance.worker_socket(model)))
    with httpx.Client(transport=transport, base_url="http://worker", timeout=30) as worker:
        text = worker.get("/metrics").text
    return {name: float(value) for name, value in (line.split(" ") for line in text.splitlines() if line)}
