"""Blue-green model versions on a real appliance: a broken version is refused and the old one keeps serving;
a good one takes over under load with no failed request, requests in flight finish on the version they
started on, and rollback goes back; the admin event stream tells each switch. Both versions are real
SmolLM2 files (copies under other paths)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.e2e.event_tail import EventTail
from tests.e2e.server import APPLIANCE, RunningAppliance, cli, process_alive, start_appliance

SERVED_VERSION = "x-served-model-version"


def _models_command(running: RunningAppliance, *args: str) -> subprocess.CompletedProcess[str]:
    """`appliance models …` as an admin at the terminal runs it, with the admin key in the environment."""
    environment = os.environ | {"APPLIANCE_HOME": str(running.home), "APPLIANCE_ADMIN_KEY": running.admin_key}
    return subprocess.run(
        [APPLIANCE, "models", *args],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _engine(running: RunningAppliance) -> dict[str, object]:
    answer = httpx.get(f"{running.base_url}/admin/engines", headers=running.headers(running.admin_key))
    (engine,) = answer.json()["data"]
    assert isinstance(engine, dict)
    return engine


def _audit(running: RunningAppliance, action: str) -> list[dict[str, object]]:
    answer = httpx.get(
        f"{running.base_url}/admin/audit", params={"limit": 50}, headers=running.headers(running.admin_key)
    )
    return [event for event in answer.json()["data"] if event["action"] == action]


def _add_version(running: RunningAppliance, model_path: Path, version: str) -> Path:
    copy = running.home / f"smollm2-v{version}.gguf"
    shutil.copyfile(model_path, copy)
    cli(running.home, "models", "add", str(copy), "--name", "smollm2-135m", "--version", version)
    return copy


def test_a_version_that_does_not_load_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, model_path: Path
) -> None:
    """Version 2's file is cut short on disk after registration: activation exits 1 with the reason, the
    refusal is audited, and version 1 never stopped serving."""
    running = start_appliance(tmp_path / "home", model_path)
    try:
        copy = _add_version(running, model_path, "2")
        with copy.open("r+b") as damaged:
            damaged.truncate(copy.stat().st_size // 2)
        before = _engine(running)
        refused = _models_command(running, "activate", "smollm2-135m", "--version", "2")
        assert refused.returncode == 1
        assert "did not load" in refused.stderr, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("error: the gateway refused (409)")
        after = _engine(running)
        assert (after["version"], after["pid"], after["state"]) == ("1", before["pid"], "ready")
        answer = httpx.post(
            f"{running.base_url}/v1/completions",
            json={"model": "default", "prompt": "Hello", "max_tokens": 4},
            headers=running.headers(),
            timeout=60,
        )
        assert answer.status_code == 200
        assert answer.headers[SERVED_VERSION] == "1"
        same = _models_command(running, "activate", "smollm2-135m", "--version", "1")
        assert "already the one serving" in same.stderr
        nothing_before = _models_command(running, "rollback", "smollm2-135m")
        assert "(404): The model `smollm2-135m` has no earlier active version." in nothing_before.stderr
        assert (same.returncode, nothing_before.returncode) == (1, 1)
        refusal, *_ = _audit(running, "models.activate")[::-1]
        assert refusal["outcome"] == "failure"
        assert "did not load" in str(refusal["detail"])
        assert list((running.home / "run").glob("smollm2-135m@*")) == [], (
            "the refused worker's socket is gone"
        )
    finally:
        running.stop()
    assert "llama.cpp could not load this model" in running.log
    assert "Traceback" not in running.log, running.log


@dataclass
class Streamed:
    """One streamed chat of the load: when it ran, which version answered, how it ended."""

    started: float
    ended: float = 0.0
    version: str = ""
    finish_reason: str | None = None
    error: str = ""


async def _stream(client: openai.AsyncOpenAI, max_tokens: int, *, count: bool = False) -> Streamed:
    """One streamed chat, or with `count` a long completion (greedy counting goes on until max_tokens)."""
    seen = Streamed(started=time.monotonic())
    try:
        if count:
            raw: Any = await client.completions.with_raw_response.create(
                model="default",
                prompt="1, 2, 3, 4, 5, 6, 7, 8,",
                max_tokens=max_tokens,
                temperature=0.0,
                stream=True,
            )
        else:
            raw = await client.chat.completions.with_raw_response.create(
                model="default",
                messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
                max_tokens=max_tokens,
                temperature=0.0,
                stream=True,
            )
        seen.version = raw.headers.get(SERVED_VERSION, "")
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].finish_reason:
                seen.finish_reason = chunk.choices[0].finish_reason
    except openai.OpenAIError as error:
        seen.error = repr(error)
    seen.ended = time.monotonic()
    return seen


async def _load(running: RunningAppliance, stop: asyncio.Event, seen: list[Streamed]) -> None:
    """Four clients streaming back to back until `stop`; one long request among them at the start."""
    client = openai.AsyncOpenAI(base_url=f"{running.base_url}/v1", api_key=running.user_key, max_retries=0)

    async def loop() -> None:
        while not stop.is_set():
            seen.append(await _stream(client, 24))

    async def long() -> None:
        seen.append(await _stream(client, 600, count=True))

    async with client:
        await asyncio.gather(long(), *(loop() for _ in range(3)))


def test_activating_a_good_version_under_load_then_rolling_back(tmp_path: Path, model_path: Path) -> None:
    """Under load, version 2 takes over with no failed request; the request streaming at the switch ends
    on version 1, whose worker stops once idle; rollback goes back to version 1."""
    running = start_appliance(tmp_path / "home", model_path)
    try:
        _add_version(running, model_path, "2")
        old_pid = _engine(running)["pid"]
        assert isinstance(old_pid, int)
        seen: list[Streamed] = []

        async def activate_under_load() -> tuple[subprocess.CompletedProcess[str], float]:
            stop = asyncio.Event()
            load = asyncio.create_task(_load(running, stop, seen))
            await asyncio.sleep(1.0)  # the load is running, the long request has started
            done = await asyncio.to_thread(
                _models_command, running, "activate", "smollm2-135m", "--version", "2"
            )
            switched = time.monotonic()
            for _ in range(
                300
            ):  # until requests sent after the switch have come back (a bound, not a timing)
                if sum(s.started > switched for s in seen) >= 2:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await load
            return done, switched

        with EventTail(running.base_url, running.admin_key) as tail:
            done, switched = asyncio.run(activate_under_load())
            told = tail.wait_for("model.activated", model="smollm2-135m")
        assert (told["version"], told["replaced_version"]) == ("2", "1")
        assert done.returncode == 0, done.stderr
        assert "smollm2-135m now serves version 2 (was 1)" in done.stdout
        assert "ok   deep probe" in done.stdout
        assert [s for s in seen if s.error or s.finish_reason not in {"stop", "length"}] == []
        straddling = [s for s in seen if s.started < switched - 1.0 and s.ended > switched]
        assert straddling, "a request was streaming across the switch"
        assert {s.version for s in straddling} == {"1"}, "it finished on the version it started on"
        assert {s.version for s in seen if s.started > switched} == {"2"}
        engine = _engine(running)
        assert (engine["version"], engine["state"]) == ("2", "ready")
        assert engine["pid"] != old_pid
        deadline = time.monotonic() + 30
        while process_alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_alive(old_pid), "the replaced worker stops once its requests are done"

        with EventTail(running.base_url, running.admin_key) as tail:
            back = _models_command(running, "rollback", "smollm2-135m")
            told = tail.wait_for("model.rolled_back", model="smollm2-135m")
        assert (told["version"], told["replaced_version"]) == ("1", "2")
        assert back.returncode == 0, back.stderr
        assert "now serves version 1 (was 2)" in back.stdout
        assert _engine(running)["version"] == "1"
        versions = _models_command(running, "versions", "smollm2-135m").stdout.splitlines()
        assert [line.split()[:2] for line in versions[1:]] == [["*", "1"], ["2", "Q4_1"]]
        listed = httpx.get(
            f"{running.base_url}/admin/models/smollm2-135m/versions",
            headers=running.headers(running.admin_key),
        ).json()["data"]
        assert [(v["version"], v["active"], v["previous"]) for v in listed] == [
            ("1", True, False),
            ("2", False, True),
        ]
        assert [e["outcome"] for e in _audit(running, "models.activate")] == ["success"]
        assert [e["outcome"] for e in _audit(running, "models.rollback")] == ["success"]
    finally:
        running.stop()
    assert "Traceback" not in running.log, running.log
