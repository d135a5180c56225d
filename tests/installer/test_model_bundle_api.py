"""POST /admin/models/import-bundle on a real gateway app: a signed model bundle on the appliance is verified
and encrypted into the store as a job, audited; a bundle signed by another key or with a changed manifest is
403 at once, one whose weights changed fails its job, and either way nothing is written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.api.test_console_gpu import gateway_app
from tests.gguf_files import write_tiny_gguf
from tests.installer.test_model_bundle import _assert_nothing_written, _flip, build_model_bundle

Keys = dict[str, tuple[Path, Path]]
POLL_STEPS = 600  # of 0.05 s: a bound on waiting, not a timing assertion


class Admin:
    """The admin API of one gateway app, with its admin key."""

    def __init__(self, client: AsyncTestClient[Litestar], key: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}

    async def post_bundle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /admin/models/import-bundle: the status and the JSON body."""
        answer = await self.client.post("/admin/models/import-bundle", json=body, headers=self.headers)
        return answer.status_code, answer.json()

    async def finished(self, job_id: str) -> dict[str, Any]:
        """The job, polled until it is no longer running."""
        for _ in range(POLL_STEPS):
            job: dict[str, Any] = (
                await self.client.get(f"/admin/jobs/{job_id}", headers=self.headers)
            ).json()
            if job["state"] != "running":
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} never finished")

    async def audit(self) -> list[tuple[str, str, str, str | None]]:
        """(action, outcome, target, actor) of the audit log, newest first."""
        events = (await self.client.get("/admin/audit", headers=self.headers)).json()["data"]
        return [(e["action"], e["outcome"], e["target"], e["actor_key_id"]) for e in events]

    async def admin_id(self) -> str:
        """The id of the admin key in use."""
        keys = (await self.client.get("/admin/keys", headers=self.headers)).json()["data"]
        return str(next(k["id"] for k in keys if k["role"] == "admin"))


def _assert_nothing_unpacked(home: Path) -> None:
    assert not [p for p in home.iterdir() if p.name.startswith(".bundle-import-")]


@asynccontextmanager
async def admin_api(home: Path) -> AsyncIterator[Admin]:
    """A real gateway app over `home` (its lifespan runs), and its admin API."""
    app, key = gateway_app(home)
    async with AsyncTestClient(app) as client:
        yield Admin(client, key)


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys) -> Path:
    """A model bundle of a tiny GGUF as `tiny` with alias `small`, signed by key `a`."""
    tiny = write_tiny_gguf(tmp_path / "Tiny.gguf")
    return build_model_bundle(tmp_path / "dist", keys["a"][0], "--model", str(tiny), "--alias", "small")


async def test_a_signed_bundle_is_imported_by_a_job_and_audited(
    appliance_home: Path, bundle: Path, keys: Keys
) -> None:
    """A development home, the signer's key in "trust": 202, the job ends succeeded naming the model, which
    the store holds encrypted; the import is audited with the admin's key, per model and for the bundle."""
    async with admin_api(appliance_home) as admin:
        status, job = await admin.post_bundle({"path": str(bundle), "trust": [str(keys["a"][1])]})
        assert status == 202, job
        assert (job["kind"], job["target"]) == ("models.import_bundle", bundle.name)
        done = await admin.finished(job["id"])
        assert done["state"] == "succeeded", done
        assert done["bytes_done"] == done["bytes_total"]
        [model] = done["result"]["models"]
        assert (model["name"], model["aliases"], model["encrypted"]) == ("tiny", ["small"], True)
        assert done["result"]["version"] == 1
        stored = (await admin.client.get("/admin/store/models", headers=admin.headers)).json()["data"]
        assert [(s["name"], s["encrypted"]) for s in stored] == [("tiny", True)]
        actor = await admin.admin_id()
        audit = await admin.audit()
        assert ("models.import_bundle", "success", bundle.name, actor) in audit
        assert ("models.import", "success", "tiny", actor) in audit
    _assert_nothing_unpacked(appliance_home)


@pytest.mark.parametrize("case", ["another key", "changed manifest"])
async def test_an_untrusted_or_changed_bundle_is_403_at_once_and_writes_nothing(
    appliance_home: Path, tmp_path: Path, bundle: Path, keys: Keys, case: str
) -> None:
    """Signed by a key not trusted here, or one bit of the signed manifest flipped: 403 `bundle_refused`
    in the OpenAI shape before any job starts, audited as a failure; no store file, no model."""
    if case == "another key":
        tiny = write_tiny_gguf(tmp_path / "evil.gguf")
        bundle = build_model_bundle(tmp_path / "evil", keys["evil"][0], "--model", str(tiny))
    else:
        _flip(bundle, b'"profile":"models"')
    async with admin_api(appliance_home) as admin:
        status, body = await admin.post_bundle({"path": str(bundle), "trust": [str(keys["a"][1])]})
        assert status == 403, body
        error = body["error"]
        assert (error["code"], error["type"]) == ("bundle_refused", "invalid_request_error")
        assert ("not trusted" if case == "another key" else "signature") in error["message"]
        assert ("models.import_bundle", "failure", bundle.name, await admin.admin_id()) in await admin.audit()
    _assert_nothing_written(appliance_home)


async def test_changed_weights_fail_the_job_and_write_nothing(
    appliance_home: Path, tmp_path: Path, bundle: Path, keys: Keys
) -> None:
    """One bit of the weights flipped (the signature still verifies): the job fails with `bundle_refused`
    naming the digest; nothing is stored, nothing unpacked is left."""
    _flip(bundle, (tmp_path / "Tiny.gguf").read_bytes()[:48])
    async with admin_api(appliance_home) as admin:
        status, job = await admin.post_bundle({"path": str(bundle), "trust": [str(keys["a"][1])]})
        assert status == 202, job
        done = await admin.finished(job["id"])
        assert done["state"] == "failed", done
        assert done["error"]["code"] == "bundle_refused"
        assert "sha256" in done["error"]["message"]
        assert ("models.import_bundle", "failure", bundle.name, await admin.admin_id()) in await admin.audit()
    _assert_nothing_written(appliance_home)


async def test_trust_comes_from_the_installed_prefix(
    installed_prefix: Path, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home = PREFIX/data: its trusted key `a` decides, "trust" is refused there (400), and a bundle by
    `a` imports without one; a development home without "trust" is 400 naming it."""
    home = installed_prefix / "data"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    tiny = write_tiny_gguf(tmp_path / "t1.gguf")
    by_a = build_model_bundle(tmp_path / "a", keys["a"][0], "--model", str(tiny))
    async with admin_api(home) as admin:
        status, body = await admin.post_bundle({"path": str(by_a), "trust": [str(keys["b"][1])]})
        assert (status, body["error"]["param"]) == (400, "trust"), body
        assert "installer.pyz trust" in body["error"]["message"]
        status, job = await admin.post_bundle({"path": str(by_a)})
        assert status == 202, job
        done = await admin.finished(job["id"])
        assert done["state"] == "succeeded", done
        assert [m["name"] for m in done["result"]["models"]] == ["t1"]
    async with admin_api(tmp_path / "dev-home") as admin:
        status, body = await admin.post_bundle({"path": str(by_a)})
        assert (status, body["error"]["param"]) == (400, "trust"), body
        assert '"trust"' in body["error"]["message"]
