"""What residency shows: each enabled model's state and the budget's use (`appliance models ps`, the console),
and the recorder that counts loads and unloads (the gateway's Prometheus metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ResidentState(StrEnum):
    """Where an enabled model is: not loaded, loading, loaded, or its last load failed (or never can)."""

    COLD = "cold"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True)
class ResidentView:
    """One row of `appliance models ps` / GET /admin/models/residency."""

    name: str
    version: str
    state: ResidentState
    engine: str
    devices: tuple[str, ...]
    memory_bytes: int
    """The plan's needed bytes while loaded or loading, else what it would need alone."""
    in_flight: int
    idle_s: float | None
    """None: busy, pinned or not loaded."""
    expires_in_s: float | None
    """Seconds until its keep-alive unloads it; None: busy, pinned or not loaded."""
    keep_alive_s: float
    pinned: bool
    loads: int
    last_used_at: float | None
    """Unix time its last request finished (or it loaded); None: never."""
    last_error: str
    """Why the last load failed, or why it can never load ('' if neither)."""


@dataclass(frozen=True)
class BudgetView:
    """What the loaded models take of the budget."""

    ram_budget_bytes: int
    ram_used_bytes: int
    max_loaded: int
    loaded: int
    gpus: tuple[tuple[str, str], ...]
    """(device label, model name holding it) for the GPUs in use."""


class LoadRecorder(Protocol):
    """Where loads and unloads are counted (the gateway's Prometheus metrics)."""

    def load_done(self, model: str, seconds: float, ok: bool) -> None:
        """One load finished, well or not, after `seconds`."""

    def unloaded(self, model: str, reason: str) -> None:
        """One loaded model was unloaded (`idle`, `evicted`, `admin`, `disabled`)."""


class Uncounted:
    """A recorder that counts nothing (tests, tools without metrics)."""

    def load_done(self, model: str, seconds: float, ok: bool) -> None:
        """Nothing to count."""

    def unloaded(self, model: str, reason: str) -> None:
        """Nothing to count."""
