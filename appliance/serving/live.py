"""Keeping a serving gateway's workers in step with the registry, whichever process changed it.

The CLI (`appliance models add|enable|disable|remove|alias`) writes the SQLite file from another process than
the gateway, the admin API from this one. Either way SQLite's `PRAGMA data_version` moves when another
connection commits, so polling it every POLL_S costs one tiny read, sees every change within a second, needs
no channel between the processes that could be down or missed, and a change made while no gateway runs is
simply what the next start reads. On a change, `sync` compares the enabled models with the workers:
- a model no longer enabled (disabled, removed) is withdrawn at once: new requests for it get the 404 of a
  name never registered; requests in flight finish on its worker, which stops once idle, as a replaced
  version does (bounded by `server.drain_timeout_s`);
- a newly enabled model goes to Residency (serving/residency.py): loaded at once if it fits beside the loaded
  ones without unloading any (and, under `[store] require_encrypted`, is encrypted), else cold until its
  first request; one that can never fit is refused, audited and kept in `not_started`, where a request for
  it reads it (503);
- a new alias needs no worker: requests resolve their names through the registry, which reads them live.
Version activation (blue-green) and routes were live before this; they stay the gateway's own business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from appliance.hardware import Hardware
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.serving.events import Events
from appliance.serving.residency import SERVE, Residency
from appliance.settings import Settings
from appliance.supervisor import Supervisor, Worker

log = logging.getLogger(__name__)

POLL_S = 0.25
"""How often the registry's change counter is read: a change takes effect within this (and a sync)."""
WITHDRAW = "models.withdraw"
"""Audit actions of the gateway itself: it started serving a model (SERVE, or refused to), or stopped."""
__all__ = ["SERVE", "WITHDRAW", "LiveModels"]


def _always(_model: ModelInfo) -> bool:
    return True


def _allowed(_model: ModelInfo) -> None:
    return None


def _same_row(a: ModelInfo, b: ModelInfo) -> bool:
    """Whether two entries are one registry row with the same weights (aliases, status and the path may
    differ: a re-encryption moves the stored file, and the running worker keeps the copy it loaded)."""
    return (a.id, a.sha256) == (b.id, b.sha256)


class LiveModels:
    """Follows the registry while serving: starts, refuses and withdraws workers as models change."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        hardware: Hardware,
        *,
        may_start: Callable[[ModelInfo], bool] = _always,
        admit: Callable[[ModelInfo], None] = _allowed,
        residency: Residency | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._supervisor = supervisor
        self.residency = residency or Residency(
            settings, registry, supervisor, hardware, Events(), may_start=may_start, admit=admit
        )
        """Which enabled models are loaded: it takes in the models enabled while serving."""
        self._seen: int | None = None
        self._dirty = True
        self._tasks: set[asyncio.Task[None]] = set()

    async def follow(self) -> None:
        """Sync whenever the database changed (or a worker finished retiring), until cancelled."""
        while True:
            try:
                now = await asyncio.to_thread(self._registry.changes.current)
                if now != self._seen or self._dirty:
                    self._seen, self._dirty = now, False
                    self.sync()
            except Exception:  # a busy or failing database must not end following it for good
                log.exception("could not follow a change of the registry; trying again")
                self._dirty = True
            await asyncio.sleep(POLL_S)

    def sync(self) -> None:
        """Bring the workers in line with the enabled models now (no await: one consistent step)."""
        models = self._registry.models
        enabled = {model.name: model for model in models.enabled()}
        for name, worker in list(self._supervisor.workers.items()):
            model = enabled.get(name)
            if model is None:
                self._withdraw(worker, self._why_gone(name))
            elif not _same_row(model, worker.model):
                # Another active version: an activation switches workers itself, on this loop. A row that
                # is gone (or whose id SQLite gave to a new row) means the name was removed and registered
                # again: a model of its own.
                row = models.get(worker.model.id)
                if row is None or not _same_row(row, worker.model):
                    self._withdraw(worker, "removed and registered again")  # Residency takes in the new
            elif model != worker.model:
                worker.launch = replace(worker.launch, model=model)  # aliases: what the engine list shows
        self.residency.sync(list(enabled.values()))

    def _why_gone(self, name: str) -> str:
        listed = any(model.name == name for model in self._registry.models.list())
        return "disabled" if listed else "removed"

    def _withdraw(self, worker: Worker, why: str) -> None:
        """No new request reaches the worker from here on; it stops once the ones in flight are done."""
        name = worker.model.name
        self._supervisor.withdraw(name)
        busy = worker.transport.in_flight
        self.residency.withdrawn(name, why)
        log.info("%s %s: no new requests; its worker stops once its %d request(s) finish", name, why, busy)
        self._registry.audit.record(
            WITHDRAW,
            outcome="success",
            target=name,
            detail=f"{why}: withdrawn; its worker stops once {busy} request(s) in flight finish",
        )
        self._spawn(self._retire(worker))

    async def _retire(self, worker: Worker) -> None:
        try:
            await self._supervisor.retire(worker, self._settings.server.drain_timeout_s)
            log.info("the worker of %s stopped", worker.model.name)
        finally:
            self._dirty = True  # what it held is free: the next sync sees the registry anew

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """After the supervisor stopped every worker: end the starts and retirements still waiting."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
