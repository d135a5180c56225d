"""Starts a worker per enabled model, watches it, restarts it with backoff, and stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

from appliance.hardware import physical_cores
from appliance.registry.models import ModelInfo
from appliance.settings import Settings, atomic_write_text

log = logging.getLogger(__name__)

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
HEALTH_POLL_S = 0.1
STABLE_RUN_S = 60.0
"""A worker that ran this long before dying is restarted after the shortest backoff again."""


class WorkerState(StrEnum):
    """Where a worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass
class Worker:
    """One supervised worker process and the client that talks to it over its unix socket."""

    model: ModelInfo
    socket_path: Path
    client: httpx.AsyncClient
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    restarts: int = 0
    last_exit: str = ""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)


def worker_environment() -> dict[str, str]:
    """The parent's environment without proxies, plus the variables that keep ML libraries offline."""
    environment = {key: value for key, value in os.environ.items() if key.lower() not in PROXY_VARIABLES}
    environment.update(OFFLINE_ENVIRONMENT)
    return environment


class Supervisor:
    """Owns the worker processes of the enabled models for the lifetime of `appliance serve`."""

    def __init__(
        self, settings: Settings, models: list[ModelInfo], on_restart: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        self._on_restart = on_restart
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        run_dir = settings.run_dir
        self.workers: dict[str, Worker] = {}
        for model in models:
            socket_path = run_dir / f"{model.name}.sock"
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            timeout = httpx.Timeout(settings.limits.request_timeout_s, connect=5.0)
            client = httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=timeout)
            self.workers[model.name] = Worker(model, socket_path, client)

    def _command(self, worker: Worker) -> list[str]:
        model, workers = worker.model, self._settings.workers
        command = [
            sys.executable,
            "-m",
            "appliance.engines.llamacpp",
            "--model",
            str(model.path),
            "--name",
            model.name,
            "--socket",
            str(worker.socket_path),
            "--context-length",
            str(min(workers.context_length, model.context_length)),
            "--threads",
            str(workers.threads or physical_cores()),
            "--parallel",
            str(workers.parallel),
            "--queue-depth",
            str(workers.queue_depth),
        ]
        if model.chat_template_override is not None:
            template_file = self._settings.run_dir / f"{model.name}.chat_template.jinja"
            atomic_write_text(template_file, model.chat_template_override)
            command += ["--chat-template-file", str(template_file)]
        return command

    async def start(self) -> None:
        """Start every worker and wait until each is ready or has failed its first start."""
        self._settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tasks = [asyncio.create_task(self._keep_running(w)) for w in self.workers.values()]
        deadline = self._settings.workers.startup_timeout_s
        waits = [asyncio.wait_for(w.ready_event.wait(), deadline) for w in self.workers.values()]
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("a worker was not ready within %.0f s; it keeps retrying", deadline)

    async def _keep_running(self, worker: Worker) -> None:
        backoff = self._settings.workers.restart_backoff_s
        while not self._stopping:
            started = time.monotonic()
            worker.socket_path.unlink(missing_ok=True)
            process = await asyncio.create_subprocess_exec(
                *self._command(worker), env=worker_environment(), start_new_session=True
            )
            self._processes[worker.model.name] = process
            worker.pid = process.pid
            worker.state = WorkerState.STARTING
            waiter = asyncio.create_task(process.wait())
            if await self._wait_ready(worker, waiter):
                worker.state = WorkerState.READY
                worker.ready_event.set()
            code = await waiter
            worker.socket_path.unlink(missing_ok=True)
            if self._stopping:
                break
            worker.ready_event.clear()
            worker.state = WorkerState.RESTARTING
            worker.restarts += 1
            worker.last_exit = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            log.warning(
                "worker %s died (%s); restarting in %.1f s", worker.model.name, worker.last_exit, backoff
            )
            if self._on_restart is not None:
                self._on_restart(worker.model.name)
            if time.monotonic() - started > STABLE_RUN_S:
                backoff = self._settings.workers.restart_backoff_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.workers.restart_backoff_max_s)

    async def _wait_ready(self, worker: Worker, exited: asyncio.Task[int]) -> bool:
        """Poll the worker's /health until it answers, it exits, or the start-up time runs out."""
        deadline = time.monotonic() + self._settings.workers.startup_timeout_s
        while time.monotonic() < deadline and not exited.done():
            if worker.socket_path.exists():
                with contextlib.suppress(httpx.HTTPError):
                    if (await worker.client.get("/health", timeout=2.0)).status_code == 200:
                        return True
            await asyncio.sleep(HEALTH_POLL_S)
        if not exited.done():
            log.error("worker %s did not become ready in time; killing it", worker.model.name)
            self._signal(worker.model.name, signal.SIGKILL)
        return False

    def _signal(self, name: str, signum: signal.Signals) -> None:
        process = self._processes.get(name)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    async def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still alive after the stop timeout, remove their sockets."""
        self._stopping = True
        for name in self._processes:
            self._signal(name, signal.SIGTERM)
        processes = [p for p in self._processes.values() if p.returncode is None]
        if processes:
            _, pending = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in processes],
                timeout=self._settings.workers.stop_timeout_s,
            )
            for name in self._processes:
                self._signal(name, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers.values():
            worker.state = WorkerState.STOPPED
            worker.socket_path.unlink(missing_ok=True)
            await worker.client.aclose()
