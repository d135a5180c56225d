"""Registry changes while serving, end to end: one real appliance (SmolLM2 as `smollm2-135m`, alias
`default`), real workers, the official `openai` client, and the CLI in its own process writing the same
SQLite file. A model added with the CLI serves within seconds; disabled under a streaming load it stops
taking requests at once (the 404 of a name never registered), the stream in flight on it finishes, the
other model fails nothing, and its worker exits; enabled again it serves again; aliases come and go live;
a model that cannot fit is refused with the planner's reason, audited, and a clear 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.awq_folders import write_awq_folder
from tests.e2e.server import RunningAppliance, cli, free_port, process_alive, serve

GEMMA = Path(__file__).resolve().parents[2] / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
LIVE = "gemma"
"""The model the tests add, disable, enable and alias (a base model: completions, no chat template)."""
SERVE_WITHIN_S = 60.0
"""Bound on a worker's load on a busy 2-core box; the registry change itself is seen within POLL_S."""
WITHDRAWN_WITHIN_S = 1.5
SETTINGS = """
[server]
host = "127.0.0.1"
port = {port}
drain_timeout_s = 120
[workers]
threads = 1
context_length = 2048
parallel = 4
"""
"""One thread per worker: two workers each decoding on every core of a small box wait on each other's
OpenMP barriers (see appliance/activation.py), and a stream on the disabled model would crawl."""
"""A disabled model answers 404 this soon after the CLI returns (the gateway polls every 0.25 s)."""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """One appliance for the module; streams in flight get two minutes to finish on a withdrawn worker."""
    if not GEMMA.is_file():
        pytest.fail(f"{GEMMA} is missing: run ./build.sh test, which fetches it")
    home = tmp_path_factory.mktemp("live") / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.format(port=port))
    cli(home, "models", "add", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    appliance = serve(home, port, admin, user)
    yield appliance
    appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log


def _client(running: RunningAppliance) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{running.base_url}/v1", api_key=running.user_key, max_retries=0, timeout=120
    )


def _engines(running: RunningAppliance) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{running.base_url}/admin/engines", headers=running.headers(running.admin_key))
    return {engine["model"]: engine for engine in answer.json()["data"]}


def _audit(running: RunningAppliance, action: str, target: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{running.base_url}/admin/audit", params={"limit": 200}, headers=running.headers(running.admin_key)
    )
    return [e for e in answer.json()["data"] if e["action"] == action and e["target"] == target]


def _complete(running: RunningAppliance, model: str) -> httpx.Response:
    return httpx.post(
        f"{running.base_url}/v1/completions",
        json={"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0},
        headers=running.headers(),
        timeout=120,
    )


def _known(running: RunningAppliance, model: str) -> int:
    """The status of GET /v1/models/{model}: answered from the registry alone, so it times the change."""
    return httpx.get(
        f"{running.base_url}/v1/models/{model}", headers=running.headers(), timeout=30
    ).status_code


def _until(what: str, check: Any, within_s: float) -> float:
    """Seconds until `check()` is true; fails the test after `within_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"{what} within {within_s:g} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_model_added_with_the_cli_while_serving_answers_within_seconds(running: RunningAppliance) -> None:
    """`appliance models add` in another process; the gateway starts its worker (audited) and serves it,
    listed by /v1/models, without a restart and without going unready meanwhile."""
    pid_before = running.process.pid
    cli(running.home, "models", "add", str(GEMMA), "--name", LIVE)
    readiness: set[int] = set()

    def served() -> bool:
        ready = httpx.get(f"{running.base_url}/health/ready", headers=running.headers(), timeout=30)
        readiness.add(ready.status_code)
        return _complete(running, LIVE).status_code == 200

    took = _until("the added model answers", served, SERVE_WITHIN_S)
    assert readiness == {200}, "the node stays ready while the added model loads"
    answer = _client(running).completions.create(model=LIVE, prompt="One, two,", max_tokens=4, temperature=0)
    assert answer.choices[0].text
    assert answer.model == LIVE
    assert LIVE in [m.id for m in _client(running).models.list()]
    assert running.process.pid == pid_before, "no restart"
    assert running.process.poll() is None
    assert _engines(running)[LIVE]["state"] == "ready"
    [record] = _audit(running, "models.serve", LIVE)
    assert record["outcome"] == "success"
    assert "worker starting" in record["detail"]
    print(f"added model served {took:.1f} s after `models add` returned")


@dataclass
class Load:
    """Streamed chats on the other model, back to back, until told to stop."""

    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    failures: list[str] = field(default_factory=list)


def _stream_chats(client: openai.OpenAI, load: Load) -> None:
    while not load.stop.is_set():
        try:
            stream = client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=16,
                stream=True,
            )
            finish = None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            if finish not in {"stop", "length"}:
                load.failures.append(f"finish_reason {finish!r}")
            load.done += 1
        except openai.OpenAIError as error:
            load.failures.append(repr(error))


@dataclass
class InFlight:
    """The long stream on the model being disabled."""

    started: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0
    finish_reason: str | None = None
    error: str = ""


def _stream_long(client: openai.OpenAI, seen: InFlight) -> None:
    try:
        stream = client.completions.create(
            model=LIVE, prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=200, temperature=0, stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                seen.tokens += 1
                seen.started.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                seen.finish_reason = chunk.choices[0].finish_reason
    except openai.OpenAIError as error:
        seen.error = repr(error)
    finally:
        seen.started.set()


def test_disabling_under_load_drains_the_stream_and_stops_the_worker(running: RunningAppliance) -> None:
    """3 threads stream chats on `default` and one long stream runs on the live model; `models disable`
    makes a new request 404 at once (as a name never registered does), the long stream finishes, the
    worker exits once idle, and the other model failed nothing."""
    _until("the live model is served", lambda: _complete(running, LIVE).status_code == 200, SERVE_WITHIN_S)
    pid = _engines(running)[LIVE]["pid"]
    assert isinstance(pid, int)
    never = _complete(running, "never-registered")
    assert never.status_code == 404
    load, seen = Load(), InFlight()
    threads = [threading.Thread(target=_stream_chats, args=(_client(running), load)) for _ in range(3)]
    long = threading.Thread(target=_stream_long, args=(_client(running), seen))
    for thread in [*threads, long]:
        thread.start()
    try:
        assert seen.started.wait(SERVE_WITHIN_S)
        assert not seen.error, seen.error
        cli(running.home, "models", "disable", LIVE)
        took = _until("a disabled model's 404", lambda: _known(running, LIVE) == 404, WITHDRAWN_WITHIN_S)
        assert seen.finish_reason is None, "the long stream was still in flight when the model went"
        gone = _complete(running, LIVE)
        assert gone.json() == {
            "error": {
                **never.json()["error"],
                "message": never.json()["error"]["message"].replace("never-registered", LIVE),
            }
        }
        assert gone.json()["error"]["code"] == "model_not_found"
        assert LIVE not in [m.id for m in _client(running).models.list()]
        assert process_alive(pid), "the worker still answers the stream in flight"
        long.join(timeout=180)
        assert not long.is_alive()
        assert seen.error == "", "the stream in flight finished"
        assert seen.finish_reason in {"stop", "length"}
        _until("the disabled model's worker exits", lambda: not process_alive(pid), 30)
        done_while_disabled = load.done
        _until("more chats on the other model", lambda: load.done > done_while_disabled + 2, 60)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert load.failures == []
    assert load.done > 0
    assert LIVE not in _engines(running)
    assert [e["outcome"] for e in _audit(running, "models.withdraw", LIVE)] == ["success"]
    assert _audit(running, "models.disable", LIVE)[0]["detail"] == "cli"
    print(f"disabled model answered 404 {took:.2f} s after `models disable` returned; {load.done} chats ok")


def test_enabling_again_serves_again_with_a_new_worker(running: RunningAppliance) -> None:
    """`models enable` brings the disabled model back without a restart."""
    cli(running.home, "models", "enable", LIVE)
    _until(
        "the re-enabled model answers", lambda: _complete(running, LIVE).status_code == 200, SERVE_WITHIN_S
    )
    assert _engines(running)[LIVE]["state"] == "ready"
    assert LIVE in [m.id for m in _client(running).models.list()]


def test_aliases_are_added_and_removed_live(running: RunningAppliance) -> None:
    """An alias added with the CLI answers at once; removed, it is a name never registered again."""
    _until("the live model is served", lambda: _complete(running, LIVE).status_code == 200, SERVE_WITHIN_S)
    assert _complete(running, "base").status_code == 404
    out = cli(running.home, "models", "alias", LIVE, "--add", "base", "--add", "gemma-base")
    assert "aliases base, gemma-base" in out
    _until("the new alias is known", lambda: _known(running, "base") == 200, 2.0)
    assert _complete(running, "base").status_code == 200
    answer = _client(running).completions.create(model="gemma-base", prompt="Hello", max_tokens=2)
    assert answer.choices[0].text is not None
    assert {"base", "gemma-base"} <= {m.id for m in _client(running).models.list()}
    cli(running.home, "models", "alias", LIVE, "--remove", "base")
    _until("the removed alias is gone", lambda: _known(running, "base") == 404, 2.0)
    assert _complete(running, "base").status_code == 404
    assert _complete(running, "gemma-base").status_code == 200
    assert [e["outcome"] for e in _audit(running, "models.alias", LIVE)] == ["success", "success"]


def test_removing_a_served_model_stops_its_worker(running: RunningAppliance) -> None:
    """`models remove` of a served model: 404 at once, its worker exits once idle."""
    _until("the live model is served", lambda: _complete(running, LIVE).status_code == 200, SERVE_WITHIN_S)
    pid = _engines(running)[LIVE]["pid"]
    cli(running.home, "models", "remove", LIVE)
    _until("a removed model's 404", lambda: _known(running, LIVE) == 404, WITHDRAWN_WITHIN_S)
    assert _complete(running, LIVE).status_code == 404
    _until("the removed model's worker exits", lambda: not process_alive(pid), 30)
    assert LIVE not in _engines(running)
    assert "removed" in _audit(running, "models.withdraw", LIVE)[0]["detail"]


def test_a_model_that_cannot_fit_is_refused_with_the_reason(
    running: RunningAppliance, tmp_path: Path
) -> None:
    """An AWQ model on a machine without vLLM (or without a GPU): refused, audited with the planner's
    reason, shown by /health/ready, and a request for it is a clear 503, while the rest serves on."""
    folder = write_awq_folder(tmp_path / "tiny-awq")
    cli(running.home, "models", "import", str(folder), "--name", "tiny-awq")

    def refused() -> list[dict[str, Any]]:
        return [e for e in _audit(running, "models.serve", "tiny-awq") if e["outcome"] == "failure"]

    _until("the audited refusal", lambda: bool(refused()), 5.0)
    reason = refused()[0]["detail"].removeprefix("not started: ")
    assert "fits nowhere" in reason
    answer = httpx.post(
        f"{running.base_url}/v1/chat/completions",
        json={"model": "tiny-awq", "messages": [{"role": "user", "content": "hi"}]},
        headers=running.headers(),
        timeout=30,
    )
    assert answer.status_code == 503
    assert answer.json()["error"]["message"] == (
        f"The model `tiny-awq` is registered but not loaded: {reason}."
    )
    ready = httpx.get(f"{running.base_url}/health/ready", headers=running.headers()).json()
    assert ready["not_started"]["tiny-awq"] == reason
    assert _complete(running, "default").status_code == 200
    assert len(refused()) == 1, "refused once, not at every change of the database"
