"""With every slot busy and the wait queue full, the gateway answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.e2e.server import start_appliance

LONG = {
    "model": "default",
    "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    "max_tokens": 200,
    "temperature": 0.9,
    "seed": 1,
}


async def first_probe_done(http: httpx.AsyncClient) -> None:
    """Wait until /health/ready shows the deep probe's first result for the one engine."""
    for _ in range(300):
        if (await http.get("/health/ready")).json().get("probes"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the first deep probe never finished")


async def test_full_queue_is_429_with_retry_after_and_the_rest_succeed(
    tmp_path: Path, model_path: Path
) -> None:
    """One slot and a queue of one: of four concurrent requests two are served and two get 429."""
    # The deep probe is a real request too: one arriving with these four would take the slot or the
    # queue place. Its first round runs as serving starts; wait for it, and no second round comes.
    running = start_appliance(
        tmp_path / "home",
        model_path,
        settings="parallel = 1\nqueue_depth = 1\n[fallback]\nprobe_interval_s = 3600\n",
    )
    try:
        async with httpx.AsyncClient(
            base_url=running.base_url, headers=running.headers(), timeout=120
        ) as http:
            await first_probe_done(http)
            responses = await asyncio.gather(
                *(http.post("/v1/chat/completions", json={**LONG, "seed": i}) for i in range(4))
            )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 429, 429]
        for refused in (r for r in responses if r.status_code == 429):
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_exceeded"
            assert refused.json()["error"]["code"] == "queue_full"
    finally:
        running.stop()
