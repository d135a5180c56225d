"""A client's mistakes never open a circuit: bad requests in a row, streamed or not, each get their 400 from
the primary, and the next good request is still served by it. (A request-caused 500, or an error event at
the start of a stream, used to count as an engine failure: a few such requests moved everyone's traffic to
the backup link.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import RunningAppliance, cli, free_port, serve

SETTINGS = """
[server]
host = "127.0.0.1"
port = {port}
[workers]
threads = 1
context_length = 1024
parallel = 2
[limits]
max_tokens = 8
[fallback]
failure_threshold = 2
cooldown_s = 600.0
probe_interval_s = 3600.0
[routes.chain]
links = ["primary", "backup"]
"""
# The deep probe is set far apart: a passed probe closes a circuit, which would hide one that requests opened.


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


UNCONVERTIBLE_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": 5}}}}
BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("an unknown schema type", _schema({"type": "foo"}), "response_format"),
    ("a pattern without ^…$", _schema({"pattern": "x"}), "response_format"),
    ("a schema llama.cpp cannot parse", _schema({"anyOf": []}), "response_format"),
    ("a hostile repetition", _schema({"type": "string", "maxLength": 10**8}), "response_format"),
    ("an unconvertible tool schema", {"tools": [UNCONVERTIBLE_TOOL], "tool_choice": "required"}, "tools"),
    ("a token outside the vocabulary", {"logit_bias": {"999999999": 1}}, "logit_bias"),
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance whose `chain` route is primary then backup (two workers on the SmolLM2 file)."""
    home = tmp_path_factory.mktemp("circuit") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(SETTINGS.replace("{port}", str(port)))
    cli(home, "models", "add", str(model_path), "--name", "primary")
    cli(home, "models", "add", str(model_path), "--name", "backup")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, admin, user)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _chat(appliance: RunningAppliance, stream: bool, **extra: Any) -> httpx.Response:
    body = {"model": "chain", "messages": [{"role": "user", "content": "Hi"}], "stream": stream, **extra}
    return httpx.post(
        f"{appliance.base_url}/v1/chat/completions", json=body, headers=appliance.headers(), timeout=120
    )


def _breakers(appliance: RunningAppliance) -> Any:
    return httpx.get(f"{appliance.base_url}/health/ready", headers=appliance.headers(), timeout=30).json()[
        "breakers"
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_bad_requests_in_a_row_do_not_open_the_circuit(chain: RunningAppliance, stream: bool) -> None:
    """Each bad request, three times over (the threshold is two): its own 400 from the primary, untouched;
    then a good request is served by the primary with no link skipped, and both circuits are closed."""
    for what, extra, param in BAD_REQUESTS * 3:
        answer = _chat(chain, stream, **extra)
        assert answer.status_code == 400, f"{what}: {answer.status_code} {answer.text[:300]}"
        assert answer.headers["content-type"].startswith("application/json"), what
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), what
        # Refused by the gateway's own checks (no engine named) or by the primary, never by the backup.
        served = answer.headers.get("x-served-model", "primary")
        assert served == "primary", f"{what}: no failover for the client's mistake"
    breakers = _breakers(chain)
    assert breakers["primary"] == "closed"
    assert set(breakers.values()) == {"closed"}, breakers
    good = _chat(chain, stream)
    assert good.status_code == 200, good.text
    assert good.headers["x-served-model"] == "primary"
    assert good.headers["x-fallback-skipped"] == "0"
