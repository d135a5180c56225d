"""A real appliance: the per-key prompt-token limit counted by the worker's tokenizer at its boundary, and
tokens per minute corrected to the real usage of plain and streamed answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from appliance.protocol import PROMPT_LIMIT_HEADER
from tests.e2e.server import RunningAppliance, cli, start_appliance

PROMPT_LIMIT = 40
SETTINGS = f"""parallel = 2
[limits]
max_tokens = 200
[limits.keys."short-prompts"]
max_prompt_tokens = {PROMPT_LIMIT}
[limits.keys."sixty-tokens"]
tokens_per_minute = 60
"""
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
NO_END = {"0": -100, "2": -100}
"""SmolLM2's end tokens banned, so a generation runs until max_tokens."""
END_NOW = {"2": 100}
"""SmolLM2's end token forced, so a generation ends at once."""


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance with a key limited in prompt tokens and one limited in tokens per minute."""
    running = start_appliance(tmp_path_factory.mktemp("usage") / "home", model_path, settings=SETTINGS)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _secret(appliance: RunningAppliance, name: str) -> str:
    return cli(appliance.home, "keys", "create", "--name", name, "--role", "user", "--quiet").strip()


def _post(
    appliance: RunningAppliance, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{appliance.base_url}{path}", json=body, headers=headers or appliance.headers(), timeout=120
    )


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}


def _generations_started(appliance: RunningAppliance) -> int:
    transport = httpx.HTTPTransport(uds=str(appliance.worker_socket()))
    with httpx.Client(transport=transport, base_url="http://worker") as worker:
        text = worker.get("/metrics").text
    found = re.search(r"^appliance_worker_generations_started_total (\d+)", text, re.M)
    assert found
    return int(found.group(1))


def _assert_too_long(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "prompt_too_long"
    assert error["param"] == param


def _content_of(appliance: RunningAppliance, prompt_tokens: int) -> str:
    """A message whose chat prompt is exactly `prompt_tokens` long, measured by the worker (unlimited key)."""
    for words in range(prompt_tokens):
        content = "Hi" + " hi" * words
        measured = _post(appliance, CHAT, _chat(content)).json()["usage"]["prompt_tokens"]
        if measured == prompt_tokens:
            return content
        assert measured < prompt_tokens, f"no message of exactly {prompt_tokens} prompt tokens"
    raise AssertionError(f"no message of exactly {prompt_tokens} prompt tokens")


def test_token_prompt_at_the_limit_passes_one_more_is_400_before_any_work(
    appliance: RunningAppliance,
) -> None:
    """40 prompt ids pass for the limited key; 41 are refused with prompt_too_long and start no generation;
    the unlimited key sends 41 without trouble."""
    short = appliance.headers(_secret(appliance, "short-prompts"))
    at = _post(appliance, COMPLETIONS, {"model": "default", "prompt": [100] * PROMPT_LIMIT}, short)
    assert at.status_code == 200, at.text
    assert at.json()["usage"]["prompt_tokens"] == PROMPT_LIMIT
    before = _generations_started(appliance)
    over = {"model": "default", "prompt": [100] * (PROMPT_LIMIT + 1), "max_tokens": 1}
    _assert_too_long(_post(appliance, COMPLETIONS, over, short), "prompt")
    _assert_too_long(_post(appliance, COMPLETIONS, {**over, "stream": True}, short), "prompt")
    assert _generations_started(appliance) == before
    assert _post(appliance, COMPLETIONS, over).status_code == 200


def test_chat_prompt_counted_with_the_template_at_the_limit_passes_one_more_is_400(
    appliance: RunningAppliance,
) -> None:
    """The worker counts the rendered chat prompt: exactly 40 tokens pass, 41 are refused naming messages."""
    short = appliance.headers(_secret(appliance, "short-prompts"))
    at = _post(appliance, CHAT, _chat(_content_of(appliance, PROMPT_LIMIT)), short)
    assert at.status_code == 200, at.text
    assert at.json()["usage"]["prompt_tokens"] == PROMPT_LIMIT
    one_more = _content_of(appliance, PROMPT_LIMIT + 1)
    _assert_too_long(_post(appliance, CHAT, _chat(one_more), short), "messages")
    client = openai.OpenAI(
        base_url=f"{appliance.base_url}/v1", api_key=_secret(appliance, "short-prompts"), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": one_more}], max_tokens=1, stream=True
        )
    assert refused.value.code == "prompt_too_long"


def test_a_client_cannot_set_its_own_prompt_limit(appliance: RunningAppliance) -> None:
    """X-Max-Prompt-Tokens from a client is ignored both ways: only the key's settings count."""
    short = appliance.headers(_secret(appliance, "short-prompts"))
    over = {"model": "default", "prompt": [100] * (PROMPT_LIMIT + 1), "max_tokens": 1}
    _assert_too_long(_post(appliance, COMPLETIONS, over, short | {PROMPT_LIMIT_HEADER: "100000"}), "prompt")
    unlimited = appliance.headers() | {PROMPT_LIMIT_HEADER: "1"}
    assert _post(appliance, COMPLETIONS, over, unlimited).status_code == 200


def test_tokens_per_minute_follow_real_usage_plain_and_streamed(appliance: RunningAppliance) -> None:
    """Budget 60. A plain answer estimated at 60 that really uses 11 gives 49 back, so a stream estimated
    at 41 is admitted (without the correction it would be 429); that stream really uses its chat template's
    tokens plus 40, far more than estimated, so the key is in debt and its next small request is 429."""
    secret = _secret(appliance, "sixty-tokens")
    headers = appliance.headers(secret)
    early_end = {"model": "default", "prompt": [100] * 10, "max_tokens": 50, "logit_bias": END_NOW}
    plain = _post(appliance, COMPLETIONS, early_end, headers)
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"]["total_tokens"] <= 11
    client = openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=secret, max_retries=0)
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=40,
        logit_bias={"0": -100, "2": -100},
        stream=True,
        stream_options={"include_usage": True},
    )
    used = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(used) == 1
    assert used[0].completion_tokens == 40
    assert used[0].total_tokens > 41 + 20  # the template alone is more than 20 tokens past the estimate
    refused = _post(appliance, CHAT, _chat("Hi"), headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert _post(appliance, CHAT, _chat("Hi")).status_code == 200  # other keys are not affected
