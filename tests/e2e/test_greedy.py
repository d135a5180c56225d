"""Greedy output through the gateway equals llama-cpp-python's own greedy output for the same model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.reference import reference_llama

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Iterator[Any]:
    """llama-cpp-python's own `Llama` on the same file with the same context, in this process."""
    llm = reference_llama(model_path)
    yield llm
    llm.close()


def test_greedy_completion_matches_llama_cpp_python(client: httpx.Client, reference: Any) -> None:
    """The same prompt at temperature 0 gives the same text, token for token."""
    prompt = "The three primary colours are"
    expected = reference.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0, repeat_penalty=1.0)
    got = client.post(
        "/v1/completions",
        json={"model": "default", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0},
    ).json()
    assert got["choices"][0]["text"] == expected["choices"][0]["text"]
    assert got["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    assert got["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]


def test_greedy_chat_matches_llama_cpp_python(client: httpx.Client, reference: Any) -> None:
    """A chat at temperature 0, streamed through the gateway, equals llama-cpp-python's chat completion."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three rivers in Europe."},
    ]
    expected = reference.create_chat_completion(
        messages=messages, max_tokens=MAX_TOKENS, temperature=0.0, repeat_penalty=1.0
    )
    pieces: list[str] = []
    body = {
        "model": "default",
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = httpx.Response(200, content=line[6:]).json()
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
    assert "".join(pieces) == expected["choices"][0]["message"]["content"]
