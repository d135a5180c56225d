"""Stop strings and embedding inputs are bounded (each costs the engine work in proportion to its number and
size, on every token or in every batch), with a 400 naming `stop` or `input`; and an embedding request whose
client hangs up stops at the worker's next batch instead of keeping the embedding thread for all of it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.server import RunningAppliance, start_appliance
from tests.security.helpers import openai_client, worker_counters

MAX_INPUTS = 300
MAX_CHARS = 200_000
SETTINGS = f"""[limits]
max_tokens = 8
max_stop_chars = 256
max_embedding_inputs = {MAX_INPUTS}
max_embedding_chars = {MAX_CHARS}
"""
PASSAGE = "The quick brown fox jumps over the lazy dog. " * 30
"""About 300 tokens: a few inputs fill one batch of the embedding context (2048 tokens here)."""


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """One appliance for this module, with embedding limits small enough to reach quickly."""
    running = start_appliance(tmp_path_factory.mktemp("inputs") / "home", model_path, settings=SETTINGS)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _refused(error: openai.BadRequestError, param: str) -> None:
    body = error.body
    assert isinstance(body, dict)
    assert (error.status_code, body["param"], body["type"]) == (400, param, "invalid_request_error"), body


@pytest.mark.parametrize(
    ("what", "stop"),
    [("five stop strings", ["a", "b", "c", "d", "e"]), ("a stop string of 257 characters", ["x" * 257])],
)
def test_too_many_or_too_long_stop_strings_are_a_400(
    appliance: RunningAppliance, what: str, stop: list[str]
) -> None:
    """At most 4 stop strings (OpenAI's limit), each at most max_stop_chars long; chat and completions."""
    client = openai_client(appliance)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], stop=stop
        )
    _refused(chat.value, "stop")
    with pytest.raises(openai.BadRequestError) as text:
        client.completions.create(model="default", prompt="Once", stop=stop)
    _refused(text.value, "stop")


def test_four_stop_strings_at_the_limit_are_taken(appliance: RunningAppliance) -> None:
    """Four strings of max_stop_chars each are answered as before."""
    answer = openai_client(appliance).completions.create(
        model="default", prompt="One, two,", stop=[c * 256 for c in "wxyz"], max_tokens=4
    )
    assert answer.choices[0].finish_reason in ("length", "stop")


def test_too_many_embedding_inputs_are_a_400(appliance: RunningAppliance) -> None:
    """One input more than max_embedding_inputs: 400 `input`, nothing embedded."""
    before = worker_counters(appliance)["appliance_worker_embedding_inputs_total"]
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(appliance).embeddings.create(model="default", input=["word"] * (MAX_INPUTS + 1))
    _refused(refused.value, "input")
    assert worker_counters(appliance)["appliance_worker_embedding_inputs_total"] == before


def test_embedding_inputs_larger_in_all_than_the_limit_are_a_400(appliance: RunningAppliance) -> None:
    """Inputs that each fit the context but together pass max_embedding_chars: 400 `input`."""
    inputs = [PASSAGE] * (MAX_CHARS // len(PASSAGE) + 1)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(appliance).embeddings.create(model="default", input=inputs)
    _refused(refused.value, "input")


def test_an_embedding_request_whose_client_leaves_stops_working(appliance: RunningAppliance) -> None:
    """A client gives up on a long request (the official client's timeout): the gateway drops its call to
    the worker, and the worker stops at its next batch; the next request is answered at once after it."""
    client = openai_client(appliance)
    client.embeddings.create(model="default", input="warm up")  # the embedding context loads on first use
    before = worker_counters(appliance)
    inputs = [PASSAGE] * (MAX_CHARS // len(PASSAGE))
    with pytest.raises(openai.APITimeoutError):
        openai_client(appliance, timeout_s=3.0).embeddings.create(model="default", input=inputs)
    deadline = time.monotonic() + 60
    while (now := worker_counters(appliance))["appliance_worker_embeddings_cancelled_total"] == before.get(
        "appliance_worker_embeddings_cancelled_total", 0
    ):
        assert time.monotonic() < deadline, f"the worker never stopped: {now}"
        time.sleep(0.2)
    done = now["appliance_worker_embedding_inputs_total"] - before["appliance_worker_embedding_inputs_total"]
    assert done < len(inputs), "it stopped before the last batch"
    time.sleep(1.0)
    later = worker_counters(appliance)["appliance_worker_embedding_inputs_total"]
    assert later == now["appliance_worker_embedding_inputs_total"], "and embeds nothing more of it"
    started = time.monotonic()
    answer = client.embeddings.create(model="default", input="after")
    assert len(answer.data) == 1
    assert time.monotonic() - started < 10.0
