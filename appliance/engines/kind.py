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

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
"""Variables that stop ML libraries from phoning home or reaching a model hub."""
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def worker_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (the parent's environment by default) without proxies, plus the offline variables."""
    source = os.environ if base is None else base
    environment = {key: value for key, value in source.items() if key.lower() not in PROXY_VARIABLES}
    environment.update(OFFLINE_ENVIRONMENT)
    return environment


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
