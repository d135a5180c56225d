"""Starting vLLM's OpenAI server as a supervised worker: argv, environment, readiness, availability.

vLLM is the optional extra `.[gpu]`; nothing here imports it, so a CPU-only install never needs it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import msgspec

from appliance.engines.kind import EngineKind, Launch, worker_environment

UNIX_SOCKET_SINCE = (0, 9, 0)
"""The first vLLM release whose server takes `--uds`; workers never listen on a network interface."""
REQUEST_LOG_OFF_BY_DEFAULT_SINCE = (0, 10, 2)
"""From this release vLLM logs no requests unless asked (`--enable-log-requests`); before, it did."""
INSTALL_HINT = "install the GPU extra: pip install '.[gpu]' (from the GPU bundle)"


class _ModelList(msgspec.Struct):
    data: list[dict[str, object]]


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string like `0.10.2` or `0.9.0rc1+cu124`."""
    numbers = [int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3]]
    major, minor, patch = (*numbers, 0, 0, 0)[:3]
    return major, minor, patch


def installed_vllm_version() -> str | None:
    """The installed vllm's version, or None where the package is absent."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_problem(version: str | None) -> str:
    """Why this vLLM cannot serve here ('' when it can); the planner then falls back to the CPU."""
    if version is None:
        return f"vLLM is not installed; {INSTALL_HINT}"
    if parse_version(version) < UNIX_SOCKET_SINCE:
        wanted = ".".join(map(str, UNIX_SOCKET_SINCE))
        return f"vLLM {version} cannot serve on a unix socket (needs {wanted} or newer); {INSTALL_HINT}"
    return ""


def vllm_argv(launch: Launch, version: str) -> list[str]:
    """The worker's argv for vLLM `version`, from the plan: the model folder and what the planner chose."""
    plan, gpu = launch.plan, launch.settings.gpu
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(launch.model.path),
        "--served-model-name",
        launch.model.name,
        "--quantization",
        plan.quantization,
        "--tensor-parallel-size",
        str(plan.tensor_parallel_size),
        "--gpu-memory-utilization",
        f"{plan.gpu_memory_utilization:.2f}",
        "--max-model-len",
        str(plan.context_length),
        "--max-num-seqs",
        str(plan.concurrency),
        "--uds",
        str(launch.socket_path),
        "--disable-uvicorn-access-log",
    ]
    if gpu.enable_prefix_caching:
        argv.append("--enable-prefix-caching")
    if plan.tool_parser:
        # Named and `required` calls need no parser (guided decoding); `auto` needs one that reads the family.
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", plan.tool_parser]
    if parse_version(version) < REQUEST_LOG_OFF_BY_DEFAULT_SINCE:
        argv.append("--disable-log-requests")  # prompts must not land in logs
    return argv


BOOT_FOLDER = Path(__file__).resolve().parent / "boot"
"""Holds the sitecustomize that makes each Python process of the worker non-dumpable (see boot/)."""
LOOPBACK_ONLY = {
    # The worker's network namespace has loopback only (see __main__.py). vLLM would otherwise find "its"
    # address by routing towards 8.8.8.8, and gloo by resolving the host name: neither exists in there.
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "NCCL_SOCKET_IFNAME": "lo",
}


def vllm_environment(launch: Launch, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The offline environment, plus the GPUs or MIG instance the plan gave this worker, loopback as its
    only network, and the start-up hook that makes each of its processes non-dumpable."""
    environment = worker_environment(base)
    environment["CUDA_VISIBLE_DEVICES"] = launch.plan.cuda_visible_devices
    environment.update(LOOPBACK_ONLY)
    inherited = environment.get("PYTHONPATH", "")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BOOT_FOLDER), inherited]))
    return environment


async def vllm_is_ready(client: httpx.AsyncClient, launch: Launch) -> bool:
    """Ready when /health answers and /v1/models lists the served name (the engine has loaded)."""
    if (await client.get("/health", timeout=2.0)).status_code != 200:
        return False
    listed = await client.get("/v1/models", timeout=2.0)
    if listed.status_code != 200:
        return False
    try:
        models = msgspec.json.decode(listed.content, type=_ModelList).data
    except msgspec.DecodeError:
        return False
    return any(entry.get("id") == launch.model.name for entry in models)


def vllm_worker_command(launch: Launch) -> list[str]:
    """vLLM's server behind the guard that makes it die with the gateway (`appliance.engines.vllm`)."""
    # The planner only places models on vLLM where vllm_problem() was empty, so a version exists.
    version = installed_vllm_version() or ".".join(map(str, UNIX_SOCKET_SINCE))
    return [sys.executable, "-m", "appliance.engines.vllm", *vllm_argv(launch, version)]


VLLM = EngineKind(
    name="vllm",
    command=vllm_worker_command,
    environment=vllm_environment,
    is_ready=vllm_is_ready,
    metrics_path="/metrics",
)
