"""Deep health: a real, tiny inference against every engine on an interval, feeding the link breakers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import msgspec

from appliance.chain import Chains
from appliance.settings import FallbackSettings
from appliance.supervisor import Supervisor, Worker, WorkerState

log = logging.getLogger(__name__)

PROBE_PROMPT = "The capital of France is"
"""A text completion, not a chat: it works for base models without a chat template too."""


PROGRESS_METRIC = "appliance_worker_decode_steps_total"
"""The llama.cpp worker's step counter: it moves while the worker decodes, whatever waits in its queue."""


async def worker_decode_steps(worker: Worker) -> int | None:
    """The worker's decode steps so far, or None where it does not say (vLLM) or does not answer."""
    try:
        answer = await worker.client.get("/metrics", timeout=2.0)
    except httpx.HTTPError:
        return None
    for line in answer.text.splitlines():
        name, _, value = line.partition(" ")
        if name == PROGRESS_METRIC and value.isdigit():
            return int(value)
    return None


async def probe_worker(worker: Worker, settings: FallbackSettings) -> tuple[bool, str]:
    """Generate a few tokens on the worker: (passed, one-line detail)."""
    if worker.state is not WorkerState.READY:
        return False, f"engine {worker.state.value}"
    steps_before = await worker_decode_steps(worker)
    body = {
        "model": worker.model.name,
        "prompt": PROBE_PROMPT,
        "max_tokens": settings.probe_max_tokens,
        "temperature": 0.0,
    }
    try:
        answer = await worker.client.post(
            "/v1/completions", content=msgspec.json.encode(body), timeout=settings.probe_timeout_s
        )
    except httpx.TimeoutException:
        steps_after = await worker_decode_steps(worker)
        if steps_before is not None and steps_after is not None and steps_after > steps_before:
            # Queued behind long prompts (a full KV pool makes requests wait): slow, not ill. A hung
            # worker does not step, and a stopped one does not answer at all.
            return True, "busy (decoding, the probe waits in its queue)"
        return False, f"no answer within {settings.probe_timeout_s:g} s"
    except httpx.HTTPError as error:
        return False, f"unreachable ({type(error).__name__})"
    if answer.status_code == 429:
        # Every slot busy and the queue full: the engine is alive and working; opening its circuit
        # would turn overload into 503s for everyone (issue 10: overload is never a 5xx).
        return True, "busy (queue full)"
    if answer.status_code != 200:
        return False, f"status {answer.status_code}"
    try:
        choices = msgspec.json.decode(answer.content, type=dict[str, object]).get("choices")
    except msgspec.DecodeError:
        return False, "answer is not JSON"
    if not isinstance(choices, list) or not choices:
        return False, "answer without choices"
    return True, "ok"


async def probe_all(
    supervisor: Supervisor,
    chains: Chains,
    settings: FallbackSettings,
    on_result: Callable[[str, bool], None] | None = None,
) -> None:
    """Probe every worker at once and record each outcome on its link's breaker."""
    workers = list(supervisor.workers.values())
    outcomes = await asyncio.gather(*(probe_worker(w, settings) for w in workers))
    for worker, (ok, detail) in zip(workers, outcomes, strict=True):
        if supervisor.workers.get(worker.model.name) is not worker:
            continue  # unloaded or replaced meanwhile: its probe says nothing of the link now
        before = chains.probes.get(worker.model.name)
        if not ok and (before is None or before.ok):
            log.warning("deep probe of %s failed: %s", worker.model.name, detail)
        elif ok and before is not None and not before.ok:
            log.info("deep probe of %s passes again", worker.model.name)
        chains.probe_done(worker.model.name, ok, detail)
        if on_result is not None:
            on_result(worker.model.name, ok)


async def probe_forever(
    supervisor: Supervisor,
    chains: Chains,
    settings: FallbackSettings,
    on_result: Callable[[str, bool], None] | None = None,
) -> None:
    """Run `probe_all` every `probe_interval_s` until cancelled (the gateway's lifespan owns the task)."""
    while True:
        try:
            await probe_all(supervisor, chains, settings, on_result)
        except Exception:  # a bug here must not end deep health for the gateway's lifetime
            log.exception("deep probe round failed")
        await asyncio.sleep(settings.probe_interval_s)
