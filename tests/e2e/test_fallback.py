"""Fallback chains end to end: two real workers (the SmolLM2 file as `primary` and `backup`), a real gateway,
kill -9 and SIGSTOP of the primary, 4xx passthrough, canned answers and 503 when a chain is exhausted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.server import RunningAppliance, cli, free_port, serve

CANNED = "The assistant is busy; please retry in a minute."
SETTINGS = f"""
[server]
host = "127.0.0.1"
port = {{port}}
[workers]
threads = 1
context_length = 1024
parallel = 4
restart_backoff_s = 0.2
[fallback]
failure_threshold = 2
cooldown_s = 1.0
first_token_timeout_s = 20.0
probe_interval_s = 0.5
probe_timeout_s = 10.0
retry_after_s = 7
[routes.chain]
links = ["primary", "backup"]
canned = "{CANNED}"
[routes.solo]
links = ["primary"]
"""
WAIT_S = 90.0


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance whose `chain` route goes primary → backup → canned, and `solo` is primary alone."""
    home = tmp_path_factory.mktemp("fallback") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.replace("{port}", str(port)))
    cli(home, "models", "add", str(model_path), "--name", "primary")
    cli(home, "models", "add", str(model_path), "--name", "backup")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, admin, user)
    yield running
    for pid in _pids(running).values():
        _signal(pid, signal.SIGCONT)
    running.stop()
    assert "Traceback" not in running.log, running.log


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _pids(appliance: RunningAppliance) -> dict[str, int]:
    answer = httpx.get(f"{appliance.base_url}/admin/engines", headers=appliance.headers(appliance.admin_key))
    return {e["model"]: e["pid"] for e in answer.json()["data"] if isinstance(e["pid"], int)}


def _ready(appliance: RunningAppliance) -> dict[str, object]:
    answer = httpx.get(f"{appliance.base_url}/health/ready", headers=appliance.headers(), timeout=10)
    body: dict[str, object] = answer.json()
    body["http_status"] = answer.status_code
    return body


def _wait_for(appliance: RunningAppliance, what: str, check: object) -> dict[str, object]:
    """Poll /health/ready until `check(body)` holds; fail with the last body after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    body = _ready(appliance)
    while time.monotonic() < deadline:
        body = _ready(appliance)
        if check(body):  # type: ignore[operator]
            return body
        time.sleep(0.2)
    raise AssertionError(f"never {what}: {body}")


def _all_closed(body: dict[str, object]) -> bool:
    breakers = body.get("breakers") or {}
    assert isinstance(breakers, dict)
    return body["status"] == "ready" and all(state == "closed" for state in breakers.values())


def _openai(appliance: RunningAppliance) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


def _chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}


def _failovers(appliance: RunningAppliance) -> float:
    text = httpx.get(f"{appliance.base_url}/metrics", headers=appliance.headers()).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("appliance_failovers_total{")
    )


def test_route_is_served_by_its_primary(chain: RunningAppliance) -> None:
    """The openai client names a route; the answer names the model that served it, with no link skipped."""
    _wait_for(chain, "all closed", _all_closed)
    raw = _openai(chain).chat.completions.with_raw_response.create(
        model="chain", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    completion = raw.parse()
    assert completion.model == "primary"
    assert raw.headers["x-served-model"] == "primary"
    assert raw.headers["x-fallback-skipped"] == "0"
    assert "x-canned-answer" not in raw.headers
    text = _openai(chain).completions.with_raw_response.create(
        model="backup", prompt="One, two,", max_tokens=3
    )
    assert text.headers["x-served-model"] == "backup", "a plain model name still works"


def test_bad_request_is_returned_without_failover(chain: RunningAppliance) -> None:
    """A 400 from the primary (a logit_bias token outside its vocabulary) comes back as is; no other link
    is tried."""
    _wait_for(chain, "all closed", _all_closed)
    before = _failovers(chain)
    answer = httpx.post(
        f"{chain.base_url}/v1/chat/completions",
        json=_chat("chain", logit_bias={"999999999": 1}),
        headers=chain.headers(),
        timeout=60,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "logit_bias"
    assert answer.headers["x-served-model"] == "primary"
    assert _failovers(chain) == before
    assert _ready(chain)["breakers"] == {"primary": "closed", "backup": "closed"}


def test_admin_edits_a_route_and_canned_answers(chain: RunningAppliance) -> None:
    """PUT /admin/routes: users may not, bad links are 400, a canned-only route answers, streamed or not."""
    admin = chain.headers(chain.admin_key)
    url = f"{chain.base_url}/admin/routes/busy"
    assert httpx.put(url, json={"links": [], "canned": CANNED}, headers=chain.headers()).status_code == 403
    bad = httpx.put(url, json={"links": ["ghost"]}, headers=admin)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "links"
    put = httpx.put(url, json={"links": [], "canned": CANNED}, headers=admin)
    assert put.status_code == 200
    assert put.json() == {"name": "busy", "links": [], "canned": CANNED}
    listed = httpx.get(f"{chain.base_url}/admin/routes", headers=admin).json()["data"]
    assert {"name": "busy", "links": [], "canned": CANNED} in listed
    audit = httpx.get(f"{chain.base_url}/admin/audit", headers=admin).json()["data"]
    outcomes = [(e["action"], e["target"], e["outcome"]) for e in audit if e["action"] == "routes.put"]
    assert outcomes[:2] == [("routes.put", "busy", "success"), ("routes.put", "busy", "failure")]

    raw = _openai(chain).chat.completions.with_raw_response.create(
        model="busy", messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.headers["x-canned-answer"] == "true"
    completion = raw.parse()
    assert completion.choices[0].message.content == CANNED
    assert completion.choices[0].finish_reason == "stop"
    stream = _openai(chain).completions.create(model="busy", prompt="Hi", stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == CANNED
    assert chunks[-1].choices[0].finish_reason == "stop"


@dataclass
class Outcome:
    """What one streamed request saw."""

    status: int = 0
    served_by: str = ""
    tokens: int = 0
    error_after_tokens: bool = False
    errors: list[str] = field(default_factory=list)


def _stream_once(appliance: RunningAppliance, outcomes: list[Outcome], max_tokens: int = 24) -> None:
    """One streamed chat on the `chain` route, recorded whatever happens."""
    seen = Outcome()
    body = {**_chat("chain", max_tokens=max_tokens), "stream": True}
    try:
        with httpx.stream(
            "POST",
            f"{appliance.base_url}/v1/chat/completions",
            json=body,
            headers=appliance.headers(),
            timeout=120,
        ) as answer:
            seen.status = answer.status_code
            seen.served_by = answer.headers.get("x-served-model", "")
            for line in answer.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    seen.error_after_tokens = seen.tokens > 0
                    seen.errors.append(event["error"]["message"])
                elif event["choices"] and event["choices"][0]["delta"].get("content"):
                    seen.tokens += 1
    except httpx.HTTPError as error:
        seen.errors.append(repr(error))
    outcomes.append(seen)


def test_kill_primary_under_load_fails_over_then_takes_traffic_back(chain: RunningAppliance) -> None:
    """kill -9 of the primary while requests stream: none fails before its first token, new requests go to
    the backup, and the restarted primary serves again once its probe passes."""
    _wait_for(chain, "all closed", _all_closed)
    pid = _pids(chain)["primary"]
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=_stream_once, args=(chain, outcomes, 32)) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let some of them reach the primary; the assertions hold whatever the timing
    os.kill(pid, signal.SIGKILL)
    after: list[Outcome] = []
    late = [threading.Thread(target=_stream_once, args=(chain, after, 16)) for _ in range(4)]
    for thread in late:
        thread.start()
    for thread in threads + late:
        thread.join(timeout=180)
    assert len(outcomes) == 6
    assert len(after) == 4
    for seen in outcomes + after:
        assert seen.status == 200, seen
        assert not seen.errors or seen.error_after_tokens, f"failed before its first token: {seen}"
        assert seen.tokens > 0 or seen.errors == [], seen
    assert {seen.served_by for seen in after} == {"backup"}, after
    during = _ready(chain)
    assert during["http_status"] == 200, "the backup serves, so the appliance stays ready"
    assert during["status"] in {"degraded", "ready"}, "ready again if the primary is already back"
    _wait_for(chain, "primary back", lambda b: _pids(chain).get("primary", pid) != pid and _all_closed(b))
    back = httpx.post(f"{chain.base_url}/v1/chat/completions", json=_chat("chain"), headers=chain.headers())
    assert back.status_code == 200
    assert back.headers["x-served-model"] == "primary"
    assert _failovers(chain) > 0


def test_hung_primary_times_out_opens_its_circuit_and_recovers(chain: RunningAppliance) -> None:
    """SIGSTOP: a stream fails over after the first-token timeout, the circuit opens, the appliance says
    degraded, a primary-only route answers 503 with Retry-After; SIGCONT and the probe close it again."""
    _wait_for(chain, "all closed", _all_closed)
    pid = _pids(chain)["primary"]
    os.kill(pid, signal.SIGSTOP)
    try:
        outcomes: list[Outcome] = []
        _stream_once(chain, outcomes)
        (seen,) = outcomes
        assert (seen.status, seen.served_by, seen.errors) == (200, "backup", [])
        body = _wait_for(
            chain, "primary circuit open", lambda b: (b.get("breakers") or {}).get("primary") == "open"
        )
        assert body["http_status"] == 200
        assert body["status"] == "degraded"
        assert body["routes"]["chain"]["serving"] == "backup"  # type: ignore[index]
        plain = httpx.post(
            f"{chain.base_url}/v1/chat/completions", json=_chat("chain"), headers=chain.headers()
        )
        assert plain.status_code == 200
        assert plain.headers["x-served-model"] == "backup"
        assert plain.headers["x-fallback-skipped"] == "1"
        solo = httpx.post(
            f"{chain.base_url}/v1/chat/completions", json=_chat("solo"), headers=chain.headers()
        )
        assert solo.status_code == 503
        assert solo.headers["retry-after"] == "7"
        assert solo.json()["error"]["code"] == "engine_unavailable"
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_for(chain, "primary circuit closed", _all_closed)
    back = httpx.post(f"{chain.base_url}/v1/chat/completions", json=_chat("chain"), headers=chain.headers())
    assert back.headers["x-served-model"] == "primary"
    assert _pids(chain)["primary"] == pid, "the hung worker was resumed, not restarted"


GEMMA = Path(__file__).resolve().parents[2] / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma_chain(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """Gemma 3 270M (a base model, registered without a chat template: completions only) before SmolLM2."""
    if not GEMMA.is_file():
        pytest.fail(f"{GEMMA} is missing: run ./build.sh test, which fetches it")
    home = tmp_path_factory.mktemp("gemma") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(
        f"[server]\nport = {port}\n[workers]\nthreads = 1\ncontext_length = 1024\n"
        '[routes.default]\nlinks = ["gemma-3-270m", "smollm2-135m"]\n'
    )
    cli(home, "models", "add", str(GEMMA), "--name", "gemma-3-270m")
    cli(home, "models", "add", str(model_path), "--name", "smollm2-135m")
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, user, user)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def test_gemma_primary_serves_completions_and_chat_skips_it(gemma_chain: RunningAppliance) -> None:
    """Gemma has no chat template on purpose: text completions go to it, chat on the route skips it to
    SmolLM2 (counted as a failover), and chat naming Gemma itself is a 400 with no failover."""
    client = _openai(gemma_chain)
    text = client.completions.with_raw_response.create(model="default", prompt="The sky is", max_tokens=3)
    assert text.headers["x-served-model"] == "gemma-3-270m"
    assert text.parse().model == "gemma-3-270m"
    chat = client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert chat.headers["x-served-model"] == "smollm2-135m"
    assert chat.headers["x-fallback-skipped"] == "1"
    metrics = httpx.get(f"{gemma_chain.base_url}/metrics", headers=gemma_chain.headers()).text
    assert "appliance_failovers_total{" in metrics
    assert 'model="gemma-3-270m",reason="no_chat_template",route="default"} 1.0' in metrics
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
    assert refused.value.code == "chat_template_missing"
