"""What residency knows of the enabled models: their plans, claims and idle times, and what they show.

The facts only, changed without awaiting: Residency (residency.py) acts on them (loads, unloads, waits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.engines.vllm.launch import installed_vllm_version, vllm_problem
from appliance.errors import ApplianceError
from appliance.hardware import Hardware
from appliance.planner import ModelPlan, plan_beside, ram_for_models, spec_from_model
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.serving.residency_rules import Candidate, exceeds_budget_message, keep_alive_of
from appliance.serving.residency_views import BudgetView, ResidentState, ResidentView
from appliance.settings import Settings
from appliance.supervisor import ENGINE_KINDS, Supervisor, Worker, WorkerState

log = logging.getLogger(__name__)

SERVE = "models.serve"
"""Audit action: the gateway took a model into serving (loaded or cold), or refused it."""


@dataclass
class Resident:
    """What residency remembers of one enabled model between its loads."""

    model: ModelInfo
    alone: ModelPlan
    """Its plan alone on an empty machine within the budget: what it needs, and whether it can ever fit."""
    refusal: str = ""
    """Why it can never be served here ('' = it can)."""
    over_budget: bool = False
    loads: int = 0
    last_error: str = ""


class Residents:
    """The enabled models residency knows, and the facts of serving them."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        hardware: Hardware,
        admit: Callable[[ModelInfo], None],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.rules = settings.residency
        self.registry = registry
        self.supervisor = supervisor
        self.hardware = hardware
        self.admit = admit
        self.clock = clock
        self.vllm_problem: str | None = None
        self.by_name: dict[str, Resident] = {}
        self.loading: dict[str, asyncio.Task[Worker]] = {}
        """The loads in progress: concurrent requests for one model share its load."""
        self.claims: dict[str, int] = {}
        """Requests let through `ensure` and not yet finished, per model: never unloaded meanwhile."""
        self.idle_since: dict[str, tuple[float, float]] = {}
        """Per model, when its last request finished (or it loaded): (monotonic, unix) seconds."""

    def used(self, name: str) -> None:
        """The model was just used (a request finished) or loaded."""
        self.idle_since[name] = (self.clock(), time.time())

    def judge(self, resident: Resident) -> None:
        """Decide once per version whether the model can ever be served here; a refusal is audited."""
        model = resident.model
        resident.alone = self.plan([], model)
        refusal, over = "", False
        if not (resident.alone.fits and resident.alone.engine in ENGINE_KINDS):
            refusal = resident.alone.reason
            budget = ram_for_models(self.hardware, self.settings)
            gguf = resident.alone.format == "gguf"
            over = bool(self.rules.ram_budget_bytes) and gguf and resident.alone.needed_bytes > budget
            if over:
                refusal = exceeds_budget_message(model.name, resident.alone, budget)
        try:
            self.admit(model)
        except ApplianceError as error:
            refusal, over = error.message, False
        resident.refusal, resident.over_budget = refusal, over
        if refusal:
            self.supervisor.not_started[model.name] = refusal
            log.warning("not serving %s: %s", model.name, refusal)
            self.audit(SERVE, "failure", model.name, f"not started: {refusal}")
        else:
            self.supervisor.not_started.pop(model.name, None)

    # Planning.

    def plan(self, serving: list[ModelPlan], model: ModelInfo) -> ModelPlan:
        """The model planned beside `serving` (the budget and the GPUs those take are gone first)."""
        if self.vllm_problem is None:
            self.vllm_problem = vllm_problem(installed_vllm_version())
        spec = spec_from_model(model)
        return plan_beside(self.hardware, serving, [spec], self.settings, vllm_problem=self.vllm_problem)

    def held(self) -> list[Worker]:
        """Every worker holding memory: serving, loading, or finishing its last requests."""
        return [*self.supervisor.workers.values(), *self.supervisor.retiring]

    def room_for_count(self) -> bool:
        """Whether one more model may load under `max_loaded`."""
        return not self.rules.max_loaded or len(self.supervisor.workers) < self.rules.max_loaded

    def plan_here(self, model: ModelInfo) -> ModelPlan | None:
        """The model's plan beside the workers there are, if it fits now without unloading any."""
        entry = self.plan([w.launch.plan for w in self.held()], model)
        fits = entry.fits and entry.engine in ENGINE_KINDS and self.room_for_count()
        return entry if fits else None

    def warm(self, name: str) -> Worker | None:
        """The model's ready worker, if it has one."""
        worker = self.supervisor.workers.get(name)
        return worker if worker is not None and worker.state is WorkerState.READY else None

    def busy(self, name: str, worker: Worker) -> bool:
        """Whether requests are in flight on it, or let through `ensure` towards it."""
        return self.claims.get(name, 0) > 0 or worker.transport.in_flight > 0

    def pinned(self, name: str) -> bool:
        """Whether its keep-alive is -1: never unloaded, never evicted."""
        resident = self.by_name.get(name)
        return resident is not None and keep_alive_of(resident.model, self.rules) < 0

    def candidates(self, loading: str) -> list[Candidate]:
        """The loaded models eviction may choose from for a load of `loading`."""
        return [
            Candidate(
                name,
                worker.launch.plan.engine,
                idle=not self.busy(name, worker),
                pinned=self.pinned(name),
                idle_since=self.idle_since.get(name, (0.0, 0.0))[0],
            )
            for name, worker in self.supervisor.workers.items()
            if name != loading and worker.state is WorkerState.READY and name not in self.loading
        ]

    # What the admin sees.

    def views(self) -> list[ResidentView]:
        """Every enabled model, in registry order."""
        return [self.view(model) for model in self.registry.models.enabled()]

    def view(self, model: ModelInfo) -> ResidentView:
        """One model's row of `models ps`."""
        name = model.name
        resident = self.by_name.get(name)
        worker = self.supervisor.workers.get(name)
        keep = keep_alive_of(model, self.rules)
        plan = worker.launch.plan if worker is not None else resident.alone if resident else None
        if worker is not None and worker.state is WorkerState.READY:
            state = ResidentState.LOADED
        elif name in self.loading or (worker is not None and worker.state is not WorkerState.FAILED):
            state = ResidentState.LOADING
        elif resident is not None and (resident.refusal or resident.last_error):
            state = ResidentState.FAILED
        else:
            state = ResidentState.COLD
        busy = worker is not None and self.busy(name, worker)
        since = self.idle_since.get(name)
        now = self.clock()
        idle = state is ResidentState.LOADED and not busy and since is not None and keep >= 0
        idle_s = now - since[0] if idle and since is not None else None
        return ResidentView(
            name=name,
            version=model.version,
            state=state,
            engine=plan.engine if plan is not None else "",
            devices=plan.devices if plan is not None else (),
            memory_bytes=plan.needed_bytes if plan is not None else 0,
            in_flight=self.claims.get(name, 0)
            if worker is None
            else max(self.claims.get(name, 0), worker.transport.in_flight),
            idle_s=idle_s,
            expires_in_s=None if idle_s is None else max(keep - idle_s, 0.0),
            keep_alive_s=keep,
            pinned=keep < 0,
            loads=resident.loads if resident is not None else 0,
            last_used_at=since[1] if since is not None else None,
            last_error=(resident.refusal or resident.last_error) if resident is not None else "",
        )

    def budget(self) -> BudgetView:
        """The RAM budget and what the workers take of it, the loaded count and the GPUs in use."""
        held = self.held()
        return BudgetView(
            ram_budget_bytes=ram_for_models(self.hardware, self.settings),
            ram_used_bytes=sum(
                w.launch.plan.needed_bytes for w in held if w.launch.plan.engine == "llamacpp"
            ),
            max_loaded=self.rules.max_loaded,
            loaded=sum(w.state is WorkerState.READY for w in self.supervisor.workers.values()),
            gpus=tuple(
                (device, w.model.name)
                for w in held
                if w.launch.plan.engine == "vllm"
                for device in w.launch.plan.devices
            ),
        )

    def audit(self, action: str, outcome: str, target: str, detail: str) -> None:
        """One row of the registry's audit log."""
        self.registry.audit.record(action, outcome=outcome, target=target, detail=detail)
