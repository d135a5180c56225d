"""The llama.cpp worker's own HTTP side, in process, on the real model (no gateway in front)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.engines.llamacpp.model import LoadedModel, WorkerConfig
from appliance.engines.llamacpp.routes import create_worker_app

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def model(model_path: Path) -> Iterator[LoadedModel]:
    """The real SmolLM2 model loaded the way a worker loads it."""
    loaded = LoadedModel(WorkerConfig(model_path, "smollm2-135m", context_length=512, threads=2))
    yield loaded
    loaded.close()


def test_health_reports_the_model_and_its_context(model: LoadedModel) -> None:
    """/health answers with the served name and the real context size."""
    with TestClient(create_worker_app(model)) as client:
        health = client.get("/health").json()
    assert health == {
        "status": "ok", "model": "smollm2-135m", "context_length": 512, "slots": 16,
        "kv_pool_tokens": 16 * 512, "kv_pool_used": 0, "kv_layout": "own_streams",
    }  # fmt: skip


def test_model_without_chat_template_gets_a_clear_400(model: LoadedModel) -> None:
    """A model with no chat template refuses chat with 400 chat_template_missing; completions still work."""
    original = model.chat_template
    model.chat_template = ChatTemplate(None, bos_token="", eos_token="")
    try:
        with TestClient(create_worker_app(model)) as client:
            refused = client.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "chat_template_missing"
            prompt = {"model": "m", "prompt": "Hi", "max_tokens": 2}
            assert client.post("/v1/completions", json=prompt).status_code == 200
    finally:
        model.chat_template = original


def test_registry_template_replaces_the_models_own(model_path: Path) -> None:
    """A template given by the registry entry is the one used to render messages."""
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    config = WorkerConfig(
        model_path, "custom", context_length=256, threads=2, chat_template_override=template
    )
    custom = LoadedModel(config)
    try:
        assert custom.chat_template.render([{"role": "user", "content": "Hi"}]) == "[user] Hi\n[assistant] "
        with TestClient(create_worker_app(custom)) as client:
            reply = client.post("/v1/chat/completions", json=CHAT).json()
        # The prompt is exactly the registry template's rendering, not the GGUF's own ChatML one.
        assert reply["usage"]["prompt_tokens"] == len(custom.tokenize("[user] Hi\n[assistant] "))
    finally:
        custom.close()


def test_max_tokens_is_clamped_to_the_room_left(model: LoadedModel) -> None:
    """Asking for more tokens than the context leaves is clamped, not refused."""
    with TestClient(create_worker_app(model)) as client:
        body = {"model": "m", "prompt": "Count: 1, 2, 3,", "max_tokens": 100_000, "temperature": 0}
        reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 512


def test_stop_string_ends_the_text_before_it(model: LoadedModel) -> None:
    """A stop string cuts the completion and is not part of the text."""
    with TestClient(create_worker_app(model)) as client:
        free = client.post(
            "/v1/completions", json={"model": "m", "prompt": "1, 2, 3,", "max_tokens": 12, "temperature": 0}
        ).json()["choices"][0]["text"]
        assert "," in free
        stop_at = free.index(",")
        cut = client.post(
            "/v1/completions",
            json={"model": "m", "prompt": "1, 2, 3,", "max_tokens": 12, "temperature": 0, "stop": [","]},
        ).json()["choices"][0]
    assert cut["text"] == free[:stop_at]
    assert cut["finish_reason"] == "stop"


def test_same_seed_same_sample(model: LoadedModel) -> None:
    """At temperature 1 the same seed gives the same text."""
    body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "seed": 7}
    with TestClient(create_worker_app(model)) as client:
        first = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        second = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert first == second


def test_shutdown_ends_queued_work_with_503(model_path: Path) -> None:
    """After shutdown begins, a new generation is answered 503 engine_unavailable, not left hanging."""
    loaded = LoadedModel(WorkerConfig(model_path, "closing", context_length=256, threads=2))
    try:
        loaded.core.begin_shutdown()
        with TestClient(create_worker_app(loaded)) as client:
            reply = client.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2})
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "engine_unavailable"
    finally:
        loaded.close()


def test_threads_change_between_steps_and_greedy_output_stays_the_same(model: LoadedModel) -> None:
    """POST /threads (the blue-green hand-over) takes 1..MAX_THREADS; one thread or two, the same tokens."""
    prompt = {"model": "m", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    with TestClient(create_worker_app(model)) as client:
        two = client.post("/v1/completions", json=prompt).json()["choices"][0]["text"]
        assert client.post("/threads", json={"threads": 1}).json() == {"threads": 1}
        one = client.post("/v1/completions", json=prompt).json()["choices"][0]["text"]
        refused = client.post("/threads", json={"threads": 0})
        assert client.post("/threads", json={"threads": 2}).status_code == 200
    assert one == two
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "threads"
