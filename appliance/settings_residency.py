"""`[residency]`: which models stay loaded, within which memory, and for how long after their last request.

Models load on their first request and unload after an idle `keep_alive_s`; when one does not fit, the least
recently used loaded model that is idle and not pinned is unloaded first (appliance/serving/residency.py).
A module of its own beside settings.py, which holds it as `Settings.residency`.
"""

from __future__ import annotations

import math
import re

import msgspec

from appliance.errors import InvalidRequestError

PINNED = -1.0
"""The keep-alive of a pinned model: never unloaded for idleness, never evicted."""


class ResidencySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How many models stay loaded at once, in how much memory, and for how long."""

    ram_budget_gib: float = 0.0
    """RAM that llama.cpp workers may take together (weights, KV cache, overhead as the planner counts
    them); 0 = the RAM the planner sees available at start. The RAM left for models is the smaller of both."""
    gpu_budget_share: float = 0.0
    """Share of each GPU's memory a vLLM worker may take; 0 = `[gpu] memory_utilization`. A GPU holds one
    model, so a vLLM model that needs a GPU an idle model holds unloads that model first, as for RAM."""
    max_loaded: int = 0
    """Most models loaded (or loading) at once; 0 = no limit but memory."""
    load_timeout_s: float = 120.0
    """How long a request waits for its model to load (and for room to be made) before a 503 with
    Retry-After."""
    keep_alive_s: float = 300.0
    """Idle seconds before an unpinned loaded model is unloaded (Ollama's default: 5 minutes); -1 = pinned
    (never unloaded, never evicted), 0 = unloaded once its last request finishes. `appliance models set
    NAME --keep-alive` overrides it per model."""

    def __post_init__(self) -> None:
        if self.ram_budget_gib < 0 or self.max_loaded < 0 or self.load_timeout_s <= 0:
            raise ValueError("residency: ram_budget_gib and max_loaded >= 0, load_timeout_s > 0")
        if not 0 <= self.gpu_budget_share <= 1:
            raise ValueError("residency: gpu_budget_share is a share of a GPU's memory, 0 to 1")
        check_keep_alive(self.keep_alive_s)

    @property
    def ram_budget_bytes(self) -> int:
        """The budget in bytes; 0 = none set."""
        return int(self.ram_budget_gib * 1024**3)


def check_keep_alive(seconds: float) -> float:
    """A keep-alive is -1 (pinned), 0 or a positive finite number of seconds; else ValueError."""
    if not math.isfinite(seconds) or (seconds < 0 and seconds != PINNED):
        raise ValueError(f"keep_alive {seconds:g}: seconds >= 0, or -1 for pinned")
    return seconds


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(text: str) -> float | None:
    """`10m`, `30s`, `1h`, `300` (seconds), `-1` (pinned), `0`; `default` is None (the setting's)."""
    value = text.strip().lower()
    if value == "default":
        return None
    if value == "-1":
        return PINNED
    found = _DURATION.match(value)
    if found is None:
        raise InvalidRequestError(
            f"keep-alive {text!r}: a duration like 30s, 5m or 1h, plain seconds, -1 (pinned), 0 "
            "(unload after each request) or default",
            param="keep_alive",
        )
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def describe_keep_alive(seconds: float) -> str:
    """A keep-alive as a person reads it: `pinned`, `unload after each request`, `5m`, `90s`."""
    if seconds < 0:
        return "pinned"
    if seconds == 0:
        return "unload after each request"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
