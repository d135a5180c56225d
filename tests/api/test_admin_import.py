"""POST /admin/models/import and GET /admin/jobs/{id} against a real running gateway, with the real model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.admin.jobs import Jobs, ProgressCallback
from tests.awq_folders import write_awq_folder
from tests.e2e.server import RunningAppliance, start_appliance

POLL_STEPS = 600  # of 0.1 s: a bound on waiting, not a timing assertion


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """`appliance serve` with the real model, an admin and a user key."""
    gateway = start_appliance(tmp_path_factory.mktemp("import") / "home", model_path)
    yield gateway
    gateway.stop()
    assert "Traceback" not in gateway.log, gateway.log


def admin(gateway: RunningAppliance, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One admin API call with the admin key."""
    return httpx.request(
        method, gateway.base_url + path, headers=gateway.headers(gateway.admin_key), timeout=30, **kwargs
    )


def finished_job(gateway: RunningAppliance, job_id: str) -> dict[str, Any]:
    """Poll the job until it is no longer running."""
    for _ in range(POLL_STEPS):
        job: dict[str, Any] = admin(gateway, "GET", f"/admin/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never finished")


def audit_actions(gateway: RunningAppliance) -> list[tuple[str, str, str]]:
    """(action, outcome, target) of the audit log, newest first."""
    events = admin(gateway, "GET", "/admin/audit").json()["data"]
    return [(e["action"], e["outcome"], e["target"]) for e in events]


def test_encrypted_import_runs_as_a_job_and_lands_in_the_store(
    running: RunningAppliance, model_path: Path
) -> None:
    """202 with a running job; it ends succeeded with every byte done; the store lists it encrypted."""
    started = admin(running, "POST", "/admin/models/import", json={"path": str(model_path), "name": "sealed"})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["kind"] == "models.import"
    assert job["bytes_total"] == model_path.stat().st_size

    done = finished_job(running, job["id"])
    assert done["state"] == "succeeded", done
    assert done["bytes_done"] == done["bytes_total"]
    assert done["error"] is None
    assert done["result"]["name"] == "sealed"
    assert done["result"]["encrypted"] is True
    assert "within a second" in done["result"]["note"]
    stored = admin(running, "GET", "/admin/store/models").json()["data"]
    assert {"name": "sealed", "encrypted": True} in [{k: s[k] for k in ("name", "encrypted")} for s in stored]
    assert ("models.import", "success", "sealed") in audit_actions(running)


def test_plain_import_registers_the_file_where_it_is(running: RunningAppliance, model_path: Path) -> None:
    """With encrypt false the registry points at the file itself, and it is listed as not encrypted."""
    body = {"path": str(model_path), "name": "in-place", "encrypt": False, "aliases": ["spot"]}
    started = admin(running, "POST", "/admin/models/import", json=body)
    assert started.status_code == 202, started.text
    done = finished_job(running, started.json()["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["aliases"] == ["spot"]
    models = {m["name"]: m for m in admin(running, "GET", "/admin/models").json()["data"]}
    assert "in-place" in models
    stored = {s["name"]: s for s in admin(running, "GET", "/admin/store/models").json()["data"]}
    assert stored["in-place"]["encrypted"] is False
    assert ("models.add", "success", "in-place") in audit_actions(running)


def test_an_awq_folder_is_imported_encrypted(running: RunningAppliance, tmp_path: Path) -> None:
    """A folder path imports an AWQ model into the store (format awq); asked plain, it is refused at once."""
    folder = write_awq_folder(tmp_path / "tiny-awq")
    plain = admin(
        running, "POST", "/admin/models/import", json={"path": str(folder), "name": "a", "encrypt": False}
    )
    assert plain.status_code == 400
    assert plain.json()["error"]["param"] == "encrypt"
    started = admin(running, "POST", "/admin/models/import", json={"path": str(folder), "name": "tiny-awq"})
    assert started.status_code == 202, started.text
    done = finished_job(running, started.json()["id"])
    assert done["state"] == "succeeded", done
    assert (done["result"]["format"], done["result"]["encrypted"]) == ("awq", True)
    models = {m["name"]: m for m in admin(running, "GET", "/admin/models").json()["data"]}
    assert models["tiny-awq"]["format"] == "awq"


def test_a_file_imports_as_a_new_version_of_a_served_model(
    running: RunningAppliance, model_path: Path
) -> None:
    """With a version, the served model's name is no conflict: version 2 is stored beside, inactive."""
    body = {"path": str(model_path), "name": "smollm2-135m", "version": "2"}
    started = admin(running, "POST", "/admin/models/import", json=body)
    assert started.status_code == 202, started.text
    done = finished_job(running, started.json()["id"])
    assert done["state"] == "succeeded", done
    assert (done["result"]["version"], done["result"]["note"]) == (
        "2",
        "a new version: activate it to serve it",
    )
    versions = admin(running, "GET", "/admin/models/smollm2-135m/versions").json()["data"]
    assert [(v["version"], v["active"]) for v in versions] == [("1", True), ("2", False)]


@pytest.mark.parametrize(
    ("case", "status", "param"),
    [
        ("missing file", 400, "path"),
        ("relative path", 400, "path"),
        ("not a gguf", 400, None),
        ("name in use", 409, "name"),
    ],
)
def test_bad_input_is_refused_at_once_with_an_openai_error(
    running: RunningAppliance, model_path: Path, tmp_path: Path, case: str, status: int, param: str | None
) -> None:
    """Each bad request gets its 4xx and an OpenAI-shaped error before any job starts; it is audited."""
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("not a model")
    bodies = {
        "missing file": {"path": str(tmp_path / "absent.gguf"), "name": "absent"},
        "relative path": {"path": "models/x.gguf", "name": "relative"},
        "not a gguf": {"path": str(text_file), "name": "notes"},
        "name in use": {"path": str(model_path), "name": "smollm2-135m"},
    }
    answer = admin(running, "POST", "/admin/models/import", json=bodies[case])
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    assert ("models.import", "failure", bodies[case]["name"]) in audit_actions(running)


def test_only_admins_may_import_and_unknown_jobs_are_404(running: RunningAppliance, model_path: Path) -> None:
    """A user key is refused; a job id nobody started is not found."""
    body = {"path": str(model_path), "name": "by-user"}
    refused = httpx.post(
        f"{running.base_url}/admin/models/import", json=body, headers=running.headers(), timeout=30
    )
    assert refused.status_code == 403
    missing = admin(running, "GET", "/admin/jobs/0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_job_reports_progress_while_its_thread_works() -> None:
    """While the work runs in its thread the job says running with the bytes done so far; then succeeded."""
    jobs = Jobs()
    halfway, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def work(progress: ProgressCallback) -> dict[str, Any]:
        progress(50)
        halfway.set()
        release.wait(timeout=30)
        return {"name": "x"}

    job = jobs.start("models.import", "x", 100, work, lambda j: finished.append(j.state))
    await asyncio.to_thread(halfway.wait, 30)
    seen = jobs.get(job.id).as_object()
    assert (seen["state"], seen["bytes_done"], seen["bytes_total"]) == ("running", 50, 100)
    release.set()
    for _ in range(POLL_STEPS):
        if finished:
            break
        await asyncio.sleep(0.01)
    assert finished == ["succeeded"]
    assert jobs.get(job.id).as_object()["bytes_done"] == 100
