"""Tool calling through a template that knows tools: the embedded default registered with a Hermes/Qwen-style
template (`--chat-template`), which renders `tools` itself and has the model answer `<tool_call>` blocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.server import RunningAppliance, cli, free_port, serve

HERMES_TEMPLATE = Path(__file__).parent / "templates" / "hermes_tools.jinja"
"""Also what `bench/tools_bench.py --chat-template` gives both servers for a native-format comparison."""
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["city", "days"],
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "forecast", "description": "Weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
]
ASK: Any = [{"role": "user", "content": "Forecast for Oslo, three days."}]


@pytest.fixture(scope="module")
def hermes(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance serving SmolLM2 under the Hermes-style template as `hermes`."""
    home = tmp_path_factory.mktemp("hermes") / "home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "settings.toml").write_text(
        f"[server]\nport = {port}\n[workers]\nthreads = 2\ncontext_length = 2048\n"
    )
    cli(home, "models", "add", str(model_path), "--name", "hermes", "--chat-template", str(HERMES_TEMPLATE))
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, admin, user)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


@pytest.fixture
def oai(hermes: RunningAppliance) -> openai.OpenAI:
    """The official client on the Hermes appliance."""
    return openai.OpenAI(base_url=f"{hermes.base_url}/v1", api_key=hermes.user_key, max_retries=0)


def test_the_template_renders_the_tools(hermes: RunningAppliance) -> None:
    """The tools reach the prompt through the template itself (the count grows by their JSON)."""
    with httpx.Client(base_url=hermes.base_url, headers=hermes.headers(), timeout=30) as http:
        bare = http.post("/tokenize", json={"model": "hermes", "messages": ASK}).json()["count"]
        offered = http.post("/tokenize", json={"model": "hermes", "messages": ASK, "tools": TOOLS}).json()
    assert offered["count"] > bare + 40


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "forecast"}}])
def test_native_calls_match_the_schema(oai: openai.OpenAI, choice: Any) -> None:
    """Required or named, at temperature 1: `<tool_call>` blocks read back as calls valid for their tool,
    the small integer range (1-5) included. One call each: with parallel calls allowed, a sampled answer may
    go on calling until `max_tokens` and end with `length`, as OpenAI's would."""
    reply = oai.chat.completions.create(
        model="hermes",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
        temperature=1.0,
        n=4,
        seed=5,
        max_tokens=96,
    )
    for answer in reply.choices:
        assert answer.finish_reason == "tool_calls"
        assert answer.message.content is None
        calls: list[Any] = list(answer.message.tool_calls or [])
        assert len(calls) == 1
        for call in calls:
            if call.function.name == "forecast":
                jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
            else:
                assert json.loads(call.function.arguments) == {}


def test_native_two_turn_conversation(oai: openai.OpenAI) -> None:
    """The call and its result go back through the template's own tool rendering."""
    first = oai.chat.completions.create(
        model="hermes",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
        temperature=0,
        max_tokens=48,
    )
    (call,) = first.choices[0].message.tool_calls or []
    history: Any = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 12 degrees."},
    ]
    second = oai.chat.completions.create(
        model="hermes", messages=history, tools=TOOLS, temperature=0, max_tokens=24
    )
    answer = second.choices[0]
    assert answer.finish_reason in {"stop", "length", "tool_calls"}
    assert answer.message.content or answer.message.tool_calls
