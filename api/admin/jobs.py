"""Background jobs of the admin API: long work runs in a thread while clients poll its progress."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency

from api.auth import admin_only
from appliance.errors import ApplianceError, NotFoundError

log = logging.getLogger(__name__)

KEPT_FINISHED_JOBS = 50
"""Finished jobs kept for clients to read; older ones are forgotten (their outcome is in the audit log)."""

ProgressCallback = Callable[[int], None]


@dataclass
class Job:
    """One background operation; the worker thread writes `bytes_done`, the event loop everything else."""

    id: str
    kind: str
    target: str
    bytes_total: int
    bytes_done: int = 0
    state: str = "running"
    """`running`, `succeeded` or `failed`."""
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    started_at: datetime = datetime.min
    finished_at: datetime | None = None

    def progress(self, done: int) -> None:
        """Record progress from the worker thread (a plain int store: no lock needed)."""
        self.bytes_done = done

    def as_object(self) -> dict[str, Any]:
        """The job as the admin API shows it."""
        return {
            "object": "job",
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "result": self.result,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def _error_object(error: BaseException) -> dict[str, Any]:
    """An error in the OpenAI shape the rest of the API uses; an unexpected one says no more than its type."""
    if isinstance(error, ApplianceError):
        return {"message": error.message, "type": error.error_type, "param": error.param, "code": error.code}
    return {
        "message": f"internal error ({type(error).__name__})",
        "type": "server_error",
        "param": None,
        "code": None,
    }


class Jobs:
    """The gateway's background jobs, by id; one instance per app, reached through a dependency."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        # The event loop keeps only weak references to tasks: hold them until they finish.
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        kind: str,
        target: str,
        bytes_total: int,
        work: Callable[[ProgressCallback], dict[str, Any]],
        on_finish: Callable[[Job], None],
    ) -> Job:
        """Run `work(progress)` in a thread; `on_finish` runs on the event loop when it ends either way."""
        job = Job(secrets.token_hex(8), kind, target, bytes_total, started_at=datetime.now(UTC))
        self._forget_old()
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, work, on_finish))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(
        self, job: Job, work: Callable[[ProgressCallback], dict[str, Any]], on_finish: Callable[[Job], None]
    ) -> None:
        try:
            job.result = await asyncio.to_thread(work, job.progress)
        except Exception as error:  # any failure must end the job as failed, never vanish with the task
            if not isinstance(error, ApplianceError):
                log.exception("job %s (%s %s) failed unexpectedly", job.id, job.kind, job.target)
            job.state, job.error = "failed", _error_object(error)
        else:
            job.state, job.bytes_done = "succeeded", job.bytes_total
        job.finished_at = datetime.now(UTC)
        on_finish(job)

    def get(self, job_id: str) -> Job:
        """The job with this id; 404 if there is none (or it was forgotten)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", param="id")
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        for job in finished[: max(0, len(finished) - KEPT_FINISHED_JOBS + 1)]:
            del self._jobs[job.id]


class JobsController(Controller):
    """Progress of background jobs; admin keys only. Not audited: reading changes nothing."""

    path = "/admin/jobs"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @get("/{job_id:str}")
    async def get_job(self, jobs: NamedDependency[Jobs], job_id: str) -> dict[str, Any]:
        """One job: state, bytes done of total, the error or the result."""
        return jobs.get(job_id).as_object()
