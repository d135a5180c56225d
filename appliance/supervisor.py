"""Starts a worker per planned model, watches it, restarts it with backoff, and stops them all.

Engines are registered, not switched on: the plan names each model's engine kind, and ENGINE_KINDS maps that
name to the module that knows the kind's command, environment and readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import httpx

from appliance.engines.kind import EngineKind, Launch
from appliance.engines.llamacpp_launch import LLAMACPP
from appliance.engines.vllm.launch import VLLM, installed_vllm_version, vllm_problem
from appliance.errors import ApplianceError
from appliance.hardware import Hardware
from appliance.planner import Plan, make_plan, spec_from_model
from appliance.registry.models import ModelInfo
from appliance.settings import Settings
from appliance.store.loading import ModelSource, plain_model

log = logging.getLogger(__name__)

ENGINE_KINDS: Mapping[str, EngineKind] = MappingProxyType({kind.name: kind for kind in (LLAMACPP, VLLM)})
HEALTH_POLL_S = 0.1
STABLE_RUN_S = 60.0
"""A worker that ran this long before dying is restarted after the shortest backoff again."""


def serving_plan(settings: Settings, models: list[ModelInfo], hardware: Hardware) -> Plan:
    """The plan for serving registered `models` on `hardware` with the engines installed here."""
    specs = [spec_from_model(model) for model in models]
    return make_plan(hardware, specs, settings, vllm_problem=vllm_problem(installed_vllm_version()))


class WorkerState(StrEnum):
    """Where a worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass
class Worker:
    """One supervised worker process and the client that talks to it over its unix socket."""

    launch: Launch
    kind: EngineKind
    client: httpx.AsyncClient
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    restarts: int = 0
    last_exit: str = ""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model(self) -> ModelInfo:
        """The registry entry this worker serves."""
        return self.launch.model

    @property
    def socket_path(self) -> Path:
        """The unix socket the worker listens on."""
        return self.launch.socket_path


class Supervisor:
    """Owns the worker processes of the models the plan fits, for the lifetime of `appliance serve`."""

    def __init__(
        self,
        settings: Settings,
        models: list[ModelInfo],
        plan: Plan,
        on_restart: Callable[[str], None] | None = None,
        model_source: ModelSource = plain_model,
    ) -> None:
        self._settings = settings
        self._model_source = model_source
        self._on_restart = on_restart
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        run_dir = settings.run_dir
        self.workers: dict[str, Worker] = {}
        self.not_started: dict[str, str] = {}
        """Models the plan did not start, with the planner's reason."""
        planned = {entry.name: entry for entry in plan.models}
        for model in models:
            entry = planned.get(model.name)
            kind = ENGINE_KINDS.get(entry.engine) if entry is not None else None
            if entry is None or not entry.fits or kind is None:
                self.not_started[model.name] = entry.reason if entry is not None else "not in the plan"
                log.warning("not starting %s: %s", model.name, self.not_started[model.name])
                continue
            socket_path = run_dir / f"{model.name}.sock"
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            timeout = httpx.Timeout(settings.limits.request_timeout_s, connect=5.0)
            client = httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=timeout)
            launch = Launch(model=model, plan=entry, socket_path=socket_path, settings=settings)
            self.workers[model.name] = Worker(launch, kind, client)

    async def worker_metrics(self) -> list[str]:
        """The Prometheus text of every ready worker whose kind exports metrics (vLLM)."""
        texts = []
        for worker in self.workers.values():
            if worker.kind.metrics_path is None or worker.state is not WorkerState.READY:
                continue
            with contextlib.suppress(httpx.HTTPError):
                answer = await worker.client.get(worker.kind.metrics_path, timeout=2.0)
                if answer.status_code == 200:
                    texts.append(answer.text)
        return texts

    async def start(self, names: Collection[str] | None = None) -> None:
        """Start every worker (or those named) and wait until each is ready or has failed its first start."""
        self._settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        starting = [
            w for n, w in self.workers.items() if (names is None or n in names) and n not in self._tasks
        ]
        for worker in starting:
            self._tasks[worker.model.name] = asyncio.create_task(self._keep_running(worker))
        deadline = self._settings.workers.startup_timeout_s
        waits = [asyncio.wait_for(w.ready_event.wait(), deadline) for w in starting]
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("a worker was not ready within %.0f s; it keeps retrying", deadline)

    async def _keep_running(self, worker: Worker) -> None:
        backoff = self._settings.workers.restart_backoff_s
        while not self._stopping:
            started = time.monotonic()
            worker.socket_path.unlink(missing_ok=True)
            try:
                async with self._model_source(worker.launch) as (launch, fds):
                    process = await asyncio.create_subprocess_exec(
                        *worker.kind.command(launch),
                        env=worker.kind.environment(launch),
                        start_new_session=True,
                        pass_fds=fds,
                    )
            except ApplianceError as error:  # the store cannot open the model: locked, wrong key, tampered
                log.error("cannot start worker %s: %s", worker.model.name, error.message)
                worker.last_exit = error.message
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.workers.restart_backoff_max_s)
                continue
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
        """Probe the worker's readiness until it answers, it exits, or the start-up time runs out."""
        deadline = time.monotonic() + self._settings.workers.startup_timeout_s
        while time.monotonic() < deadline and not exited.done():
            if worker.socket_path.exists():
                with contextlib.suppress(httpx.HTTPError):
                    if await worker.kind.is_ready(worker.client, worker.launch):
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

    async def stop_workers(self, names: Collection[str]) -> None:
        """Stop the named workers (no restart) while the others keep serving; start() revives them."""
        tasks = [self._tasks.pop(name) for name in names if name in self._tasks]
        for task in tasks:  # first, so that no restart races the signals below
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        processes = {n: p for n, p in self._processes.items() if n in names and p.returncode is None}
        for name in processes:
            self._signal(name, signal.SIGTERM)
        if processes:
            waits = [asyncio.create_task(p.wait()) for p in processes.values()]
            _, pending = await asyncio.wait(waits, timeout=self._settings.workers.stop_timeout_s)
            for name in processes:
                self._signal(name, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=5)
        for name in names:
            worker = self.workers[name]
            worker.state, worker.pid = WorkerState.STOPPED, None
            worker.ready_event.clear()
            worker.socket_path.unlink(missing_ok=True)

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
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for worker in self.workers.values():
            worker.state = WorkerState.STOPPED
            worker.socket_path.unlink(missing_ok=True)
            await worker.client.aclose()
