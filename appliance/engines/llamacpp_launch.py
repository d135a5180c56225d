"""How the supervisor starts our llama.cpp worker (`python -m appliance.engines.llamacpp`)."""

from __future__ import annotations

import sys

import httpx
import msgspec

from appliance.atomic_files import atomic_write_text
from appliance.egress import in_network_namespace
from appliance.engines.kind import EngineKind, Launch, worker_environment
from appliance.hardware import physical_cores


def llamacpp_threads(launch: Launch) -> int:
    """The worker's compute threads: the setting, or one per physical core."""
    return launch.settings.workers.threads or physical_cores()


async def llamacpp_set_threads(client: httpx.AsyncClient, threads: int) -> None:
    """Tell a running worker to decode with `threads` threads from its next step on."""
    answer = await client.post("/threads", json={"threads": threads}, timeout=5.0)
    answer.raise_for_status()


def llamacpp_command(launch: Launch) -> list[str]:
    """The worker's argv; a chat template override is written next to its socket first."""
    model, workers = launch.model, launch.settings.workers
    command = [
        sys.executable,
        "-m",
        "appliance.engines.llamacpp",
        "--model",
        str(model.path),
        "--name",
        model.name,
        "--socket",
        str(launch.socket_path),
        # Per request, the slots and the pool they share: the planner's figures (see planner.on_cpu).
        "--context-length",
        str(launch.plan.context_length),
        "--threads",
        str(llamacpp_threads(launch)),
        "--parallel",
        str(launch.plan.concurrency),
        "--kv-pool-tokens",
        str(launch.plan.kv_pool_tokens),
        "--queue-depth",
        str(workers.queue_depth),
        "--stream-interval",
        str(workers.stream_interval),
        "--compute-priority",
        workers.compute_priority,
        "--schema-limits",
        msgspec.json.encode(launch.settings.limits.schema).decode(),
    ]
    if model.chat_template_override is not None:
        template_file = launch.settings.run_dir / f"{model.name}.chat_template.jinja"
        atomic_write_text(template_file, model.chat_template_override)
        command += ["--chat-template-file", str(template_file)]
    return command


async def llamacpp_is_ready(client: httpx.AsyncClient, _launch: Launch) -> bool:
    """The worker answers /health only once its model is loaded."""
    return (await client.get("/health", timeout=2.0)).status_code == 200


LLAMACPP = EngineKind(
    name="llamacpp",
    # No network but its unix socket: a private network namespace where the OS allows one.
    command=lambda launch: in_network_namespace(llamacpp_command(launch)),
    environment=lambda _launch: worker_environment(),
    is_ready=llamacpp_is_ready,
    metrics_path="/metrics",
    metrics_need_model_label=True,
    compute_threads=llamacpp_threads,
    set_threads=llamacpp_set_threads,
)
