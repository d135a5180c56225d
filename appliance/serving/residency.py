"""Which enabled models have a loaded worker, within a memory budget (`[residency]`).

- At start the enabled models that fit together (the RAM budget, the GPUs, `max_loaded`) are loaded in
  registry order; the rest are cold. A model enabled while serving is loaded at once if it fits beside the
  loaded ones without unloading anything, else it stays cold.
- A request for a cold model loads it (`ensure`) and waits, bounded by `load_timeout_s`; concurrent requests
  for it share one load. The request holds a claim on the model from `ensure` until its response (a stream
  too) is finished, so it is never unloaded in between; the worker's InFlightTransport counts the rest
  (probes, activation checks).
- When the model does not fit, the least recently used loaded model that is idle and not pinned is unloaded,
  one at a time, planning again after each (planner.plan_beside). With nothing to unload the load waits for a
  model to become idle, then answers 503 with Retry-After; pinned models that hold the room, or a model that
  alone on an empty machine exceeds the budget, are refused at once with the figures.
- A loaded model idle for its keep-alive is unloaded (`keep_alive_s`, per model or `[residency]`'s).
- A load that fails (a first start that never became ready) is FAILED with the worker's exit as the reason;
  the other models serve on, and the next request tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from appliance.errors import ApplianceError, EngineUnavailableError, ModelNotFoundError
from appliance.hardware import Hardware
from appliance.planner import ModelPlan
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.serving.events import Events
from appliance.serving.residency_rules import (
    ModelBusyError,
    ModelExceedsBudgetError,
    ModelLoadError,
    NoRoomError,
    PinnedOutError,
    choose_victim,
    expired,
    gib,
    keep_alive_of,
    pinned_out_message,
)
from appliance.serving.residency_views import (
    BudgetView,
    LoadRecorder,
    ResidentState,
    ResidentView,
    Uncounted,
)
from appliance.serving.residents import SERVE, Resident, Residents
from appliance.settings import Settings
from appliance.supervisor import Supervisor, Worker, WorkerState

log = logging.getLogger(__name__)
__all__ = [
    "SERVE",
    "BudgetView",
    "LoadRecorder",
    "Residency",
    "ResidentState",
    "ResidentView",
]

LOAD, UNLOAD = "models.load", "models.unload"
WAIT_S = 0.1
"""How often a load waiting for room looks again (a request finishing, a worker stopping)."""
KEEP_ALIVE_CHECK_S = 0.25


def _always(_model: ModelInfo) -> bool:
    return True


def _allowed(_model: ModelInfo) -> None:
    return None


class Residency:
    """Owns which enabled models have a loaded worker; see the module's docstring for the rules."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        hardware: Hardware,
        events: Events,
        *,
        may_start: Callable[[ModelInfo], bool] = _always,
        admit: Callable[[ModelInfo], None] = _allowed,
        recorder: LoadRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._rules = settings.residency
        self._registry = registry
        self._supervisor = supervisor
        self._events = events
        self._may_start = may_start
        self._recorder: LoadRecorder = recorder or Uncounted()
        self._clock = clock
        self._r = Residents(settings, registry, supervisor, hardware, admit, clock)
        self._tasks: set[asyncio.Task[None]] = set()

    # Following the registry.

    async def start(self) -> None:
        """At serve start: load the enabled models that fit together, in registry order; the rest are cold."""
        added = [self._arrive(model, load_now=False) for model in self._registry.models.enabled()]
        startable = [r for r in added if r is not None and self._may_start(r.model)]
        loads = [self._begin_load(r) for r in startable]
        await asyncio.gather(*loads, return_exceptions=True)

    def sync(self, enabled: list[ModelInfo]) -> None:
        """Follow the enabled models (LiveModels calls this on every change): forget the gone, take in the
        new, keep the facts of the rest up to date (aliases, keep-alive, the active version)."""
        names = {model.name for model in enabled}
        for name in list(self._r.by_name):
            if name not in names:
                del self._r.by_name[name]
                self._supervisor.not_started.pop(name, None)
        for model in enabled:
            resident = self._r.by_name.get(model.name)
            if resident is None:
                self._arrive(model, load_now=True)
            elif (resident.model.id, resident.model.path) != (model.id, model.path):
                if model.name not in self._supervisor.workers:  # re-registered, or a cold one's new version
                    self._arrive(model, load_now=True)
                else:  # an activation switched its worker already
                    resident.model = model
                    self._r.judge(resident)
            else:
                resident.model = model

    def _arrive(self, model: ModelInfo, *, load_now: bool) -> Resident | None:
        """Take in a newly enabled model: refused (audited), added to load now, or cold. Returns it when a
        worker was added for it."""
        resident = Resident(model, self._r.plan([], model))
        self._r.by_name[model.name] = resident
        self._r.judge(resident)
        if resident.refusal:
            return None
        if model.name in self._supervisor.workers:
            return None  # a worker from before (an activation): already served
        entry = self._r.plan_here(model)
        if entry is None:
            if load_now:  # at start the loads' own audit rows say what was loaded, as before residency
                self._r.audit(SERVE, "success", model.name, f"version {model.version}: cold until requested")
            return None
        self._supervisor.add(model, entry)
        starts = self._may_start(model)
        if load_now:
            detail = "worker starting" if starts else "waits for the store to be unlocked"
            self._r.audit(SERVE, "success", model.name, f"version {model.version}: {detail} ({entry.reason})")
        if load_now and starts:
            self._spawn(self._quietly(self._begin_load(resident)))
        return resident

    # Serving requests.

    async def ensure(self, model: ModelInfo) -> tuple[Worker, float]:
        """The ready worker of `model` and the milliseconds this request waited for it to load (0: loaded).

        Takes a claim on the model that keeps it loaded until `release(model.name)`: the caller releases it
        once its response is finished (or at once if it raises here, which releases it itself)."""
        self._r.claims[model.name] = self._r.claims.get(model.name, 0) + 1
        try:
            worker = self._r.warm(model.name)
            if worker is not None:
                return worker, 0.0
            started = self._clock()
            worker = await self._loaded(model.name)
            return worker, (self._clock() - started) * 1000
        except BaseException:
            self.release(model.name)
            raise

    def release(self, name: str) -> None:
        """A request that `ensure` let through has finished: the model is idle from now if it was the last."""
        left = self._r.claims.get(name, 0) - 1
        if left <= 0:
            self._r.claims.pop(name, None)
        else:
            self._r.claims[name] = left
        self._r.used(name)

    def servable(self, name: str) -> bool:
        """Whether a request for `name` may be served (loaded, or it may be loaded): not refused for good."""
        resident = self._r.by_name.get(name)
        return resident is None or not resident.refusal

    def cold_servable(self, name: str) -> bool:
        """Whether `name` is enabled, not loaded, and loadable: not refused, its last load did not fail."""
        resident = self._r.by_name.get(name)
        if resident is None or resident.refusal or resident.last_error:
            return False
        return name not in self._supervisor.workers

    def names(self) -> list[str]:
        """The enabled models residency knows."""
        return list(self._r.by_name)

    def loaded(self, name: str) -> bool:
        """Whether `name` has a ready worker now."""
        return self._r.warm(name) is not None

    def plan(self, name: str) -> ModelPlan | None:
        """The plan it runs with (loaded), or would run with alone (cold); None for a model not known."""
        worker = self._supervisor.workers.get(name)
        if worker is not None:
            return worker.launch.plan
        resident = self._r.by_name.get(name)
        return None if resident is None else resident.alone

    async def load(self, name: str) -> float:
        """Ensure `name` is loaded, unloading least recently used idle models if needed; the milliseconds
        waited (0 if it was loaded). Raises ApplianceError saying why it cannot be."""
        if self._r.warm(name) is not None:
            return 0.0
        started = self._clock()
        await self._loaded(name)
        return (self._clock() - started) * 1000

    async def _loaded(self, name: str) -> Worker:
        """Wait for the model's load (its own or one in progress), bounded by `load_timeout_s`."""
        resident = self._resident(name)
        if resident.over_budget:
            raise ModelExceedsBudgetError(f"The model `{name}` cannot be loaded here: {resident.refusal}.")
        if resident.refusal:
            raise EngineUnavailableError(
                f"The model `{name}` is registered but not loaded: {resident.refusal}."
            )
        worker = self._supervisor.workers.get(name)
        if worker is not None and worker.state is not WorkerState.READY and worker.restarts:
            raise EngineUnavailableError(f"The engine for `{name}` is restarting; retry shortly.")
        task = self._r.loading.get(name)
        if task is None:
            task = self._begin_load(resident)
        timeout = self._rules.load_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError as error:
            stuck = NoRoomError(f"The model `{name}` did not load within {timeout:g} s; retry shortly.")
            raise stuck from error

    def _resident(self, name: str) -> Resident:
        resident = self._r.by_name.get(name)
        if resident is None:  # enabled a moment ago: the registry knows it before the next sync
            self.sync(self._registry.models.enabled())
            resident = self._r.by_name.get(name)
        if resident is None:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")
        return resident

    def _begin_load(self, resident: Resident) -> asyncio.Task[Worker]:
        name = resident.model.name
        task = asyncio.create_task(self._load(resident))
        self._r.loading[name] = task

        def finished(done: asyncio.Task[Worker]) -> None:
            if self._r.loading.get(name) is done:
                del self._r.loading[name]

        task.add_done_callback(finished)
        return task

    async def _load(self, resident: Resident) -> Worker:
        """One load: make room, start the worker, wait until it is ready or failed; counted and told."""
        model = resident.model
        name = model.name
        started = self._clock()
        self._events.publish("model.loading", model=name)
        try:
            worker = self._supervisor.workers.get(name)
            if worker is not None and worker.state is WorkerState.FAILED:
                await self._drop(worker)
                worker = None
            if worker is None:
                entry = await self._make_room(resident, started + self._rules.load_timeout_s)
                worker = self._supervisor.add(model, entry)
            if not self._may_start(model):
                raise EngineUnavailableError(f"The model `{name}` waits for the store to be unlocked.")
            await self._supervisor.start([name])
            await self._supervisor.until_started(worker)  # one the store's unlock started is not awaited
            if worker.state is not WorkerState.READY:
                await self._drop(worker)
                raise ModelLoadError(f"The model `{name}` could not be loaded: {worker.last_exit}.")
        except ApplianceError as error:
            if isinstance(error, ModelLoadError):
                resident.last_error = error.message
            self._recorder.load_done(name, self._clock() - started, ok=False)
            self._events.publish("model.load_failed", model=name, error=error.message)
            self._r.audit(LOAD, "failure", name, error.message)
            raise
        seconds = self._clock() - started
        resident.loads += 1
        resident.last_error = ""
        self._r.used(name)
        memory = worker.launch.plan.needed_bytes
        self._recorder.load_done(name, seconds, ok=True)
        self._events.publish("model.loaded", model=name, load_ms=round(seconds * 1000), memory_bytes=memory)
        self._r.audit(LOAD, "success", name, f"loaded in {seconds:.1f} s ({gib(memory)})")
        return worker

    async def _drop(self, worker: Worker) -> None:
        """Take a worker that failed its first start out of serving and stop it."""
        if self._supervisor.workers.get(worker.model.name) is worker:
            self._supervisor.withdraw(worker.model.name)
        await self._supervisor.retire(worker, 0)

    async def _make_room(self, resident: Resident, deadline: float) -> ModelPlan:
        """The model's plan once it fits: unload LRU idle unpinned models one at a time, else wait."""
        model = resident.model
        while True:
            if self._r.by_name.get(model.name) is not resident:
                raise ModelNotFoundError(f"The model `{model.name}` does not exist.", param="model")
            entry = self._r.plan_here(model)
            if entry is not None:
                return entry
            self._refuse_if_pinned_out(resident)  # before unloading any: that would be for nothing
            victim = choose_victim(
                self._r.candidates(model.name), resident.alone.engine, any_engine=not self._r.room_for_count()
            )
            if victim is not None:
                await self._unload(victim, "evicted", f"unloaded to make room for {model.name}")
                continue
            if self._clock() >= deadline:
                raise NoRoomError(
                    f"The model `{model.name}` needs room that busy models hold; nothing became idle "
                    f"within {self._rules.load_timeout_s:g} s. Retry shortly."
                )
            await asyncio.sleep(WAIT_S)

    def _refuse_if_pinned_out(self, resident: Resident) -> None:
        """Refuse at once when only pinned models hold the room: waiting would never make it."""
        pinned = [w for w in self._supervisor.workers.values() if self._r.pinned(w.model.name)]
        if not pinned:
            return
        beside = self._r.plan([w.launch.plan for w in pinned], resident.model)
        count_full = bool(self._rules.max_loaded) and len(pinned) >= self._rules.max_loaded
        if beside.fits and not count_full:
            return
        names = [w.model.name for w in pinned]
        why = f"at most {self._rules.max_loaded} model(s) load at once" if count_full else beside.reason
        raise PinnedOutError(pinned_out_message(resident.model.name, resident.alone, names, why))

    # Unloading.

    async def unload(self, name: str, *, reason: str = "admin") -> None:
        """Unload `name` now; 409 `model_busy` while it answers requests or loads; nothing if it is cold."""
        worker = self._supervisor.workers.get(name)
        if name in self._r.loading:
            raise ModelBusyError(f"The model `{name}` is loading; unload it once it has loaded.")
        if worker is None:
            self._resident(name)  # a name not served at all is a 404
            return
        if self._r.busy(name, worker):
            busy = max(self._r.claims.get(name, 0), worker.transport.in_flight)
            raise ModelBusyError(f"The model `{name}` is answering {busy} request(s); unload it once idle.")
        await self._unload(name, reason, "unloaded by an admin" if reason == "admin" else reason)

    async def _unload(self, name: str, reason: str, detail: str) -> None:
        worker = self._supervisor.withdraw(name)  # no await before: it was idle, no request got in between
        if worker is None:
            return
        self._unloaded(name, reason, detail)
        await self._supervisor.retire(worker, self._settings.server.drain_timeout_s)

    def withdrawn(self, name: str, why: str) -> None:
        """LiveModels withdrew the loaded `name` (disabled or removed): counted and told as an unload."""
        self._unloaded(name, "disabled", why)

    def _unloaded(self, name: str, reason: str, detail: str) -> None:
        since = self._r.idle_since.get(name)
        idle_s = round(self._clock() - since[0], 3) if since is not None else None
        log.info("unloading %s (%s)", name, detail)
        self._recorder.unloaded(name, reason)
        self._events.publish("model.unloaded", model=name, reason=reason, idle_s=idle_s)
        self._r.audit(UNLOAD, "success", name, f"{reason}: {detail}")

    async def keep_alive(self) -> None:
        """Unload each loaded model once it has been idle for its keep-alive, until cancelled."""
        while True:
            await asyncio.sleep(KEEP_ALIVE_CHECK_S)
            now = self._clock()
            for name, worker in list(self._supervisor.workers.items()):
                resident = self._r.by_name.get(name)
                if resident is None or worker.state is not WorkerState.READY or self._r.busy(name, worker):
                    continue
                keep = keep_alive_of(resident.model, self._rules)
                since = self._r.idle_since.setdefault(name, (now, time.time()))[0]
                if expired(since, keep, now):
                    await self._unload(name, "idle", f"idle for {now - since:.0f} s (keep-alive {keep:g} s)")

    # Housekeeping.

    def views(self) -> list[ResidentView]:
        """Every enabled model, in registry order."""
        return self._r.views()

    def budget(self) -> BudgetView:
        """The RAM budget and what the workers take of it, the loaded count and the GPUs in use."""
        return self._r.budget()

    async def _quietly(self, task: asyncio.Task[Worker]) -> None:
        with contextlib.suppress(ApplianceError):  # told, counted and audited by the load itself
            await task

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """After the supervisor stopped every worker: end the loads still waiting."""
        for task in [*self._tasks, *self._r.loading.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._r.loading.values(), return_exceptions=True)
