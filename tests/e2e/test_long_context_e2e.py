"""Long prompts on the default settings, end to end: a request may use the model's whole trained context
whatever the slots (each slot its own KV stream where RAM holds them all, else one pool they share), and
concurrent long prompts wait for room instead of failing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import RunningAppliance, cli, free_port, serve

SENTENCES = [
    "The plant's cooling loop is inspected every morning before the first shift starts.",
    "Each operator signs the log after checking the pressure gauges and the valve positions.",
    "Maintenance windows are planned a week ahead and announced on the control room board.",
    "Spare pumps are kept in the north store, beside the filters and the gasket kits.",
]


def document(tokens_wanted: int, topic: int) -> str:
    """A plain document of roughly `tokens_wanted` tokens, different from the first words per topic."""
    return f"Report {topic}. " + " ".join(SENTENCES[(topic + i) % 4] for i in range(tokens_wanted // 16))


def _serve_default_workers(home: Path, model_path: Path, more_settings: str = "") -> RunningAppliance:
    """An appliance on the default [workers] settings (only the port and two threads given)."""
    home.mkdir(parents=True)
    port = free_port()
    settings = f'[server]\nhost = "127.0.0.1"\nport = {port}\n[workers]\nthreads = 2\n'
    (home / "settings.toml").write_text(settings + more_settings)
    cli(home, "models", "add", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    return serve(home, port, admin, user)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance on the default [workers] settings."""
    running = _serve_default_workers(tmp_path_factory.mktemp("long") / "home", model_path)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def test_a_6000_token_prompt_is_answered(defaults: RunningAppliance) -> None:
    """Far beyond a slot's old share (1,024 tokens): answered, and the usage counts every prompt token."""
    client = openai.OpenAI(base_url=f"{defaults.base_url}/v1", api_key=defaults.user_key, max_retries=0)
    text = document(6000, 0) + "\nWhat is inspected every morning?"
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": text}], max_tokens=16, temperature=0
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 6000
    assert reply.choices[0].finish_reason in {"stop", "length"}
    plan = cli(defaults.home, "plan")
    assert "16 slots, each its own KV stream of 8192 tokens" in plan  # this box's RAM holds them all
    engines = httpx.get(f"{defaults.base_url}/admin/engines", headers=defaults.headers(defaults.admin_key))
    (engine,) = engines.json()["data"]
    assert (engine["engine"], engine["context_length"], engine["slots"]) == ("llamacpp", 8192, 16)
    assert engine["kv_pool_tokens"] == 16 * 8192
    # The worker's pool and slots reach the gateway's Prometheus exposition, labelled with the model.
    metrics = httpx.get(f"{defaults.base_url}/metrics", headers=defaults.headers(defaults.admin_key)).text
    assert re.search(r'^appliance_worker_kv_pool_cells\{model="smollm2-135m"\} 131072(\.0)?$', metrics, re.M)
    assert re.search(r'^appliance_worker_slots\{model="smollm2-135m"\} 16(\.0)?$', metrics, re.M)
    used_line = r'^appliance_worker_kv_pool_cells_used\{model="smollm2-135m"\} (\d+)(\.0)?$'
    used = re.search(used_line, metrics, re.M)
    assert used is not None
    assert int(used.group(1)) > 6000  # the answered prompt's cells, kept as cache


def test_eight_concurrent_3000_token_prompts_all_answer(defaults: RunningAppliance) -> None:
    """Eight long prompts at once, two documents shared by four each: zero errors, and the repeats of a
    document report its cells as cached."""

    async def ask(client: openai.AsyncOpenAI, index: int) -> Any:
        text = document(3000, index % 2) + f"\nQuestion {index}: where are the spare pumps kept?"
        return await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": text}], max_tokens=16, temperature=0
        )

    async def all_of_them() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=f"{defaults.base_url}/v1",
            api_key=defaults.user_key,
            max_retries=0,
            timeout=300.0,
        ) as client:
            return await asyncio.gather(*(ask(client, index) for index in range(8)))

    replies = asyncio.run(all_of_them())
    assert len(replies) == 8
    assert all(reply.usage.prompt_tokens > 3000 for reply in replies)
    cached = [
        (reply.usage.prompt_tokens_details.cached_tokens or 0) if reply.usage.prompt_tokens_details else 0
        for reply in replies
    ]
    assert sum(count > 2500 for count in cached) >= 4  # each document evaluated about once


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """Default workers, but a first-token window of 2 s: far shorter than a queue of long prompts takes."""
    home = tmp_path_factory.mktemp("impatient") / "home"
    running = _serve_default_workers(home, model_path, "[fallback]\nfirst_token_timeout_s = 2.0\n")
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def test_streams_queued_behind_long_prompts_wait_instead_of_failing(impatient: RunningAppliance) -> None:
    """Four streamed 3,000-token prompts at once: the last ones see their first token long after the 2 s
    window, yet none fails over or errors, because the engine is visibly decoding meanwhile."""

    async def stream(client: openai.AsyncOpenAI, index: int) -> str:
        text = document(3000, index) + "\nWhat is planned a week ahead?"
        chunks = await client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": text}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

    async def all_of_them() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{impatient.base_url}/v1", api_key=impatient.user_key, max_retries=0, timeout=300.0
        ) as client:
            return await asyncio.gather(*(stream(client, index) for index in range(4)))

    answers = asyncio.run(all_of_them())  # a timed-out link would be a 503 here: one link, no fallback
    assert all(answers)
