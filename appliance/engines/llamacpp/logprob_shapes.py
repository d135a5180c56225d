"""Log probabilities in OpenAI's two shapes: chat's `content` entries and the legacy completions' lists."""

from __future__ import annotations

from typing import Any

from appliance.engines.llamacpp.core import TokenLogprob


def _text(token: bytes) -> str:
    # A token may hold part of a UTF-8 character: `bytes` carries it exactly, `token` shows it readably.
    return token.decode("utf-8", "replace")


def chat_entries(entries: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` of a chat completion: one entry per token with its top alternatives."""
    return [
        {
            "token": _text(entry.token),
            "logprob": entry.logprob,
            "bytes": list(entry.token),
            "top_logprobs": [
                {"token": _text(token), "logprob": logprob, "bytes": list(token)}
                for token, logprob in entry.top
            ],
        }
        for entry in entries
    ]


def completion_logprobs(entries: tuple[TokenLogprob, ...], text_offset: int) -> dict[str, Any]:
    """`choices[].logprobs` of a text completion: parallel lists, offsets counted from `text_offset`."""
    offsets: list[int] = []
    at = text_offset
    for entry in entries:
        offsets.append(at)
        at += len(_text(entry.token))
    return {
        "tokens": [_text(entry.token) for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{_text(token): logprob for token, logprob in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs` object."""
    return {"content": chat_entries(entries), "refusal": None}
