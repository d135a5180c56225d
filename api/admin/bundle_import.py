"""POST /admin/models/import-bundle: a signed model bundle on the appliance, verified and encrypted into the
store as a background job, exactly as `appliance models import-bundle` does (appliance/cli/model_bundle.py).

Admin only, audited. The signed manifest is checked at once, so a bundle that another key signed, or whose
manifest changed, is 403 `bundle_refused` before any job starts; a member that fails its signed digest fails
the job with the same error. Either way nothing reaches the store or the registry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency

from api.admin.imports import model_object
from api.admin.jobs import Job, Jobs, ProgressCallback
from api.auth import admin_only
from api.state import GatewayState
from appliance.cli.model_bundle import (
    bundle_trust,
    bundled_models,
    check_bundle,
    import_bundled,
    verify_and_unpack,
)
from appliance.errors import ApplianceError, InvalidRequestError
from appliance.registry.keys import KeyInfo
from appliance.store.format import Progress
from appliance.store.staging import staging_folder

ACTION = "models.import_bundle"


class BundleImportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/models/import-bundle: the bundle's path on the appliance."""

    path: str
    trust: list[str] = msgspec.field(default_factory=list)
    """Public keys (or root documents) on the appliance to verify with, for a home that is not an installed
    prefix's data directory; an installed prefix's own trusted keys decide, and refuse these."""


def _bundle_path(data: BundleImportRequest) -> Path:
    path = Path(data.path)
    if not path.is_absolute():
        raise InvalidRequestError(f"{data.path!r}: give an absolute path on the appliance", param="path")
    if not path.is_file():
        raise InvalidRequestError(f"{data.path}: no such file on the appliance", param="path")
    return path


class BundleImportController(Controller):
    """Importing signed model bundles from a path on the appliance; admin keys only, audited."""

    path = "/admin/models/import-bundle"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @post("/", status_code=202)
    async def import_bundle(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        jobs: NamedDependency[Jobs],
        data: BundleImportRequest,
    ) -> dict[str, Any]:
        """Check the bundle's signature now, then verify and import it as a job (GET /admin/jobs/{id})."""
        audit, actor, home = gateway.registry.audit, request.user.id, gateway.settings.home
        target = Path(data.path).name
        try:
            bundle = _bundle_path(data)
            trust = bundle_trust(home, [Path(t) for t in data.trust], option='"trust"')
            manifest = await asyncio.to_thread(check_bundle, bundle, trust)
            gateway.store.refuse_if_locked()
        except ApplianceError as error:
            audit.record(ACTION, outcome="failure", actor_key_id=actor, target=target, detail=error.message)
            raise
        size = bundle.stat().st_size
        origin = f"api: bundle {bundle.name} version {manifest.version}, key {manifest.key_id[:16]}"

        def verify_and_import(progress: ProgressCallback) -> dict[str, Any]:
            # Bytes verified, then bytes encrypted after them: about twice the bundle's size in all.
            encrypted = [0]  # the bytes of the models before this one

            def encrypting(_name: str, total: int) -> Progress:
                before = encrypted[0]
                encrypted[0] += total
                return lambda count: progress(min(size + before + count, 2 * size))

            with staging_folder(home) as root:
                verified = verify_and_unpack(bundle, trust, root / "bundle", progress)
                models = bundled_models(verified, root / "bundle")
                store = gateway.store.store()
                imported = import_bundled(store, gateway.registry, models, origin, encrypting, actor)
            return {
                "object": "model_bundle_import",
                "bundle": str(bundle),
                "version": verified.version,
                "key_id": verified.key_id,
                "models": [model_object(model, encrypted=True) for model in imported],
            }

        def audit_outcome(job: Job) -> None:
            failed = job.error is not None
            audit.record(
                ACTION,
                outcome="failure" if failed else "success",
                actor_key_id=actor,
                target=target,
                detail=str(job.error["message"]) if job.error else origin,
            )

        job = jobs.start(ACTION, target, 2 * size, verify_and_import, audit_outcome)
        return job.as_object()
