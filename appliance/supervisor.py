"""Starts a worker per planned model, watches it, restarts it with backoff, and stops them all.

Engines are registered, not switched on: the plan names each model's engine kind, and ENGINE_KINDS maps that
name to the module that knows the kind's command, environment and readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import httpx

from appliance.engines.kind import EngineKind, Launch
from appliance.engines.llamacpp_launch import LLAMACPP
from appliance.engines.metrics_label import with_model_label
from appliance.engines.vllm.launch import VLLM, installed_vllm_version, vllm_problem
from appliance.errors import ApplianceError
from appliance.hardware import Hardware
from appliance.inflight import InFlightTransport
from appliance.planner import ModelPlan, Plan, make_plan, spec_from_model
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
    FAILED = "failed"
    """Its first start never became ready (a corrupt file, a crash while loading): not retried."""


class WorkerStartError(ApplianceError):
    """A worker (a new model version being activated) did not start; the reason is one line."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "activation_refused"


@dataclass(eq=False)  # identity: two workers of one model (blue-green) are two keys
class Worker:
    """One supervised worker process and the client that talks to it over its unix socket."""

    launch: Launch
    kind: EngineKind
    client: httpx.AsyncClient
    transport: InFlightTransport
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
        self._tasks: dict[Worker, asyncio.Task[None]] = {}
        self._processes: dict[Worker, asyncio.subprocess.Process] = {}
        self._retiring: set[Worker] = set()
        self._starts = itertools.count(1)
        """Replaced workers still finishing the requests they had when a new version took over."""
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
            launch = Launch(
                model=model, plan=entry, socket_path=run_dir / f"{model.name}.sock", settings=settings
            )
            self.workers[model.name] = self._new_worker(launch, kind)

    @property
    def retiring(self) -> tuple[Worker, ...]:
        """Workers taken out of serving (a replaced version, a disabled model) still finishing requests."""
        return tuple(self._retiring)

    def add(self, model: ModelInfo, entry: ModelPlan) -> Worker:
        """Serve `model` from now on with a worker planned as `entry` (not started yet: see `start`)."""
        kind = ENGINE_KINDS[entry.engine]
        in_use = {w.socket_path for w in (*self.workers.values(), *self._retiring, *self._tasks)}
        socket_path = self._settings.run_dir / f"{model.name}.sock"
        if socket_path in in_use:  # a worker of an earlier life of this name still drains on it
            socket_path = self._settings.run_dir / f"{model.name}.{next(self._starts)}.sock"
        launch = Launch(model=model, plan=entry, socket_path=socket_path, settings=self._settings)
        worker = self._new_worker(launch, kind)
        self.not_started.pop(model.name, None)
        self.workers[model.name] = worker
        return worker

    def withdraw(self, name: str) -> Worker | None:
        """Stop routing `name` to its worker at once; the caller retires the worker returned (if any)."""
        self.not_started.pop(name, None)
        worker = self.workers.pop(name, None)
        if worker is not None:
            self._retiring.add(worker)  # from this moment, so that `stop` reaches it whatever happens next
        return worker

    def _new_worker(self, launch: Launch, kind: EngineKind) -> Worker:
        transport = InFlightTransport(httpx.AsyncHTTPTransport(uds=str(launch.socket_path)))
        timeout = httpx.Timeout(self._settings.limits.request_timeout_s, connect=5.0)
        client = httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=timeout)
        return Worker(launch, kind, client, transport)

    async def worker_metrics(self) -> list[str]:
        """The Prometheus text of every ready worker whose kind exports metrics (vLLM's own; llama.cpp's
        counters, KV pool and slots, labelled with the model)."""
        texts = []
        for worker in list(self.workers.values()):  # a copy: a model may be added or withdrawn meanwhile
            if worker.kind.metrics_path is None or worker.state is not WorkerState.READY:
                continue
            with contextlib.suppress(httpx.HTTPError):
                answer = await worker.client.get(worker.kind.metrics_path, timeout=2.0)
                if answer.status_code == 200:
                    text = answer.text
                    if worker.kind.metrics_need_model_label:
                        text = with_model_label(text, worker.model.name)
                    texts.append(text)
        return texts

    async def start(self, names: Collection[str] | None = None) -> None:
        """Start every worker (or those named) and wait until each is ready or has failed its first start."""
        self._settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        starting = [
            w for n, w in self.workers.items() if (names is None or n in names) and w not in self._tasks
        ]
        for worker in starting:
            self._tasks[worker] = asyncio.create_task(self._keep_running(worker))
        await asyncio.gather(*(self.until_started(w) for w in starting))

    async def until_started(self, worker: Worker) -> bool:
        """Wait until the worker is ready (True) or its first start failed (False, why in last_exit)."""
        task = self._tasks.get(worker)
        if task is None:
            return worker.state is WorkerState.READY
        ready = asyncio.ensure_future(worker.ready_event.wait())
        try:
            # The start-up bound is `_wait_ready`'s; this one only keeps a wedged spawn from hanging here.
            limit = self._settings.workers.startup_timeout_s + self._settings.workers.stop_timeout_s + 5
            await asyncio.wait({ready, task}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        return worker.state is WorkerState.READY

    async def _spawn(self, worker: Worker) -> asyncio.subprocess.Process | None:
        """Start the worker's process from its model source; None (reason in last_exit) if it cannot."""
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
            return None
        self._processes[worker] = process
        worker.pid = process.pid
        worker.state = WorkerState.STARTING
        return process

    async def _keep_running(
        self, worker: Worker, running: tuple[asyncio.subprocess.Process, asyncio.Task[int]] | None = None
    ) -> None:
        """Start the worker, wait until it is ready, and restart it with backoff whenever it dies.

        `running`: a process already started and ready (an activated version), watched from here on.
        """
        backoff = self._settings.workers.restart_backoff_s
        served = running is not None
        """Whether it was ever ready: a first start that fails is a failed load, reported and not retried
        (a corrupt file would fail forever); a worker that served and then died is restarted."""
        while not self._stopping:
            started = time.monotonic()
            if running is None:
                process = await self._spawn(worker)
                if process is None and not served:
                    worker.state = WorkerState.FAILED
                    return
                if process is None:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._settings.workers.restart_backoff_max_s)
                    continue
                waiter = asyncio.create_task(process.wait())
                if await self._wait_ready(worker, waiter):
                    worker.state = WorkerState.READY
                    worker.ready_event.set()
                    served = True
                elif not served:
                    code = await waiter
                    self._processes.pop(worker, None)
                    worker.socket_path.unlink(missing_ok=True)
                    worker.state, worker.pid = WorkerState.FAILED, None
                    limit = self._settings.workers.startup_timeout_s
                    worker.last_exit = (
                        f"its worker was not ready within {limit:g} s"
                        if time.monotonic() - started >= limit
                        else f"its worker exited before it was ready ({_describe_exit(code)})"
                    )
                    log.error("worker %s failed to load: %s", worker.model.name, worker.last_exit)
                    return
            else:
                (process, waiter), running = running, None
            code = await waiter
            worker.socket_path.unlink(missing_ok=True)
            if self._stopping:
                break
            worker.ready_event.clear()
            worker.state = WorkerState.RESTARTING
            worker.restarts += 1
            worker.last_exit = _describe_exit(code)
            log.warning(
                "worker %s died (%s); restarting in %.1f s", worker.model.name, worker.last_exit, backoff
            )
            if self._on_restart is not None:
                self._on_restart(worker.model.name)
            if time.monotonic() - started > STABLE_RUN_S:
                backoff = self._settings.workers.restart_backoff_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.workers.restart_backoff_max_s)

    async def start_candidate(self, model: ModelInfo) -> Worker:
        """Start `model` (a new version of a served name) beside the worker serving that name, once.

        Returns it ready but not yet serving (see `switch`); WorkerStartError if it does not start or
        load. Unlike a served worker it is not retried: a version that cannot start is refused.
        """
        current = self.workers.get(model.name)
        if current is None:
            raise WorkerStartError(f"model {model.name!r} is not being served here; nothing to replace")
        # A new name per start: a replaced worker of the same version may still be draining on its socket.
        socket_path = self._settings.run_dir / f"{model.name}@{model.version}.{next(self._starts)}.sock"
        candidate = self._new_worker(
            replace(current.launch, model=model, socket_path=socket_path), current.kind
        )
        process = await self._spawn(candidate)
        if process is None:
            await candidate.client.aclose()
            raise WorkerStartError(
                f"version {model.version} of {model.name} cannot start: {candidate.last_exit}"
            )
        waiter = asyncio.create_task(process.wait())
        if not await self._wait_ready(candidate, waiter):
            code = await waiter
            self._processes.pop(candidate, None)
            candidate.socket_path.unlink(missing_ok=True)
            await candidate.client.aclose()
            raise WorkerStartError(
                f"version {model.version} of {model.name} did not load ({_describe_exit(code)})"
            )
        candidate.state = WorkerState.READY
        candidate.ready_event.set()
        self._tasks[candidate] = asyncio.create_task(self._keep_running(candidate, (process, waiter)))
        return candidate

    def switch(self, worker: Worker) -> Worker:
        """Route the worker's model name to `worker` from now on; returns the worker it replaced.

        One dict assignment on the event loop: a request picks the old or the new worker, never neither.
        """
        replaced = self.workers[worker.model.name]
        self.workers[worker.model.name] = worker
        return replaced

    async def retire(self, worker: Worker, drain_timeout_s: float) -> None:
        """Stop a replaced or withdrawn worker once the requests it is answering are done, or the time is
        up."""
        self._retiring.add(worker)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.transport.idle.wait(), drain_timeout_s)
            if worker.transport.in_flight > 0:
                log.warning(
                    "stopping the replaced %s with %d request(s) unfinished after %.0f s",
                    worker.model.name,
                    worker.transport.in_flight,
                    drain_timeout_s,
                )
            await self._stop(worker)
        finally:
            self._retiring.discard(worker)
            await worker.client.aclose()

    async def _stop(self, worker: Worker) -> None:
        """Stop one worker for good: no restart, SIGTERM, SIGKILL after the stop timeout."""
        task = self._tasks.pop(worker, None)
        if task is not None:  # first, so that no restart races the signals below
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        process = self._processes.pop(worker, None)
        if process is not None and process.returncode is None:
            self._signal(worker, signal.SIGTERM, process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self._settings.workers.stop_timeout_s)
            self._signal(worker, signal.SIGKILL, process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
        worker.state, worker.pid = WorkerState.STOPPED, None
        worker.ready_event.clear()
        worker.socket_path.unlink(missing_ok=True)

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
            self._signal(worker, signal.SIGKILL)
        return False

    def _signal(
        self, worker: Worker, signum: signal.Signals, process: asyncio.subprocess.Process | None = None
    ) -> None:
        process = process or self._processes.get(worker)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    async def stop_workers(self, names: Collection[str]) -> None:
        """Stop the named workers (no restart) while the others keep serving; start() revives them."""
        await asyncio.gather(*(self._stop(self.workers[name]) for name in names))

    async def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still alive after the stop timeout, remove their sockets."""
        self._stopping = True
        every = [*self.workers.values(), *self._retiring]
        await asyncio.gather(*(self._stop(worker) for worker in every))
        for worker in list(self.workers.values()):
            await worker.client.aclose()


def _describe_exit(code: int) -> str:
    """A process's exit status as a person reads it."""
    return f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
