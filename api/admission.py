"""What a request was admitted with, kept on the request for the way to the worker and back: the key's
prompt-token limit (sent to the worker, which has the tokenizer) and the tokens-per-minute charge (corrected
to the real usage once the answer gives it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request

from appliance.protocol import PROMPT_LIMIT_HEADER

STATE_KEY = "admission"
Correct = Callable[[str, int, int, int], None]
"""RateLimiter.correct: (key id, tokens per minute, charged, used)."""


@dataclass
class Admission:
    """One admitted request's limits that only the worker or the answer can check."""

    key_id: str
    max_prompt_tokens: int
    tokens_per_minute: int
    charged: int
    correct: Correct
    settled: bool = False

    def worker_headers(self) -> dict[str, str]:
        """The headers that carry the key's limits to the worker (none when it has no prompt limit)."""
        return {PROMPT_LIMIT_HEADER: str(self.max_prompt_tokens)} if self.max_prompt_tokens > 0 else {}

    def settle(self, used: int) -> None:
        """Correct the charge to the real usage, once: only the link that answered reports usage."""
        if self.settled:
            return
        self.settled = True
        self.correct(self.key_id, self.tokens_per_minute, self.charged, used)


def remember(request: Request[Any, Any, Any], admission: Admission) -> None:
    """Keep the admission on the request for the proxy."""
    request.state[STATE_KEY] = admission


def worker_headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The headers for the worker; built here from the key only, so a client's own X-Max-Prompt-Tokens
    never reaches a worker (the gateway forwards no client headers)."""
    admission = request.state.get(STATE_KEY)
    return admission.worker_headers() if isinstance(admission, Admission) else {}


def settle_usage(request: Request[Any, Any, Any], prompt_tokens: int, completion_tokens: int) -> None:
    """Correct the request's tokens-per-minute charge to the usage its answer reported."""
    admission = request.state.get(STATE_KEY)
    if isinstance(admission, Admission):
        admission.settle(prompt_tokens + completion_tokens)
