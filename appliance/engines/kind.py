"""What the supervisor needs to know to run one kind of engine: its command, environment and readiness."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.planner import ModelPlan
from appliance.registry.models import ModelInfo
from appliance.settings import Settings
from installer.egress import offline_environment


def worker_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (the parent's environment by default) without proxies, plus the offline variables."""
    # One definition for the installer's children and the workers: installer/egress.py (stdlib only).
    return offline_environment(os.environ if base is None else base)


@dataclass(frozen=True)
class Launch:
    """Everything one worker start needs: the model, its plan, its socket and the settings."""

    model: ModelInfo
    plan: ModelPlan
    socket_path: Path
    settings: Settings


@dataclass(frozen=True)
class EngineKind:
    """One kind of worker process; the supervisor looks kinds up by the plan's engine name."""

    name: str
    command: Callable[[Launch], list[str]]
    """The worker's argv."""
    environment: Callable[[Launch], dict[str, str]]
    """The worker's whole environment."""
    is_ready: Callable[[httpx.AsyncClient, Launch], Awaitable[bool]]
    """One readiness probe over the worker's socket: True once it serves."""
    metrics_path: str | None = None
    """Where the worker exposes Prometheus metrics that the gateway merges into its own, if anywhere."""
    metrics_need_model_label: bool = False
    """The worker's metrics do not name its model (llama.cpp's): the gateway adds a `model` label."""
    compute_threads: Callable[[Launch], int] | None = None
    """CPU threads the worker decodes with, for kinds that compute on the CPU (None: not CPU-bound)."""
    set_threads: Callable[[httpx.AsyncClient, int], Awaitable[None]] | None = None
    """Change a running worker's compute threads (CPU kinds): two workers of one model share the cores."""
