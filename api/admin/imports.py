"""POST /admin/models/import: register a GGUF file that is on the appliance, plain or encrypted into the
store, as a background job. Admin only, audited; cheap checks answer at once, the long part is the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency

from api.admin.jobs import Job, Jobs, ProgressCallback
from api.auth import admin_only
from api.state import GatewayState
from appliance.errors import ApplianceError, ConflictError, InvalidRequestError, ModelFileError
from appliance.gguf_info import GGUF_MAGIC, read_gguf_info
from appliance.registry.keys import KeyInfo
from appliance.registry.models import ModelInfo

SERVED_AFTER_RESTART = "the gateway serves it from its next start"


class ImportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/models/import: a GGUF file's path on the appliance and the name to give it."""

    path: str
    name: str
    encrypt: bool = True
    """Encrypt a copy into the store (the file is left alone); false registers the file where it is."""
    aliases: list[str] = msgspec.field(default_factory=list)


def _checked_file(path: str) -> Path:
    """The file, if it is an absolute path to a readable file that starts like a GGUF file."""
    source = Path(path)
    if not source.is_absolute():
        raise InvalidRequestError(f"{path!r}: give an absolute path on the appliance", param="path")
    if not source.is_file():
        raise InvalidRequestError(f"{path}: no such file", param="path")
    try:
        with source.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror})") from error
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    return source


def _check_names_free(gateway: GatewayState, names: list[str]) -> None:
    for model in gateway.registry.models.list():
        taken = set(names) & set(model.public_names)
        if taken:
            raise ConflictError(
                f"name {sorted(taken)[0]!r} is already used by model {model.name!r}", param="name"
            )


def _model_object(model: ModelInfo, encrypted: bool) -> dict[str, Any]:
    return {
        "name": model.name,
        "aliases": list(model.aliases),
        "architecture": model.architecture,
        "quantization": model.quantization,
        "size_bytes": model.size_bytes,
        "encrypted": encrypted,
        "note": SERVED_AFTER_RESTART,
    }


class ImportController(Controller):
    """Importing models from a path on the appliance; admin keys only, audited when the job ends."""

    path = "/admin/models/import"
    guards = [admin_only]  # noqa: RUF012 - Litestar reads this class attribute as configuration

    @post("/", status_code=202)
    async def import_model(
        self,
        request: Request[KeyInfo, Any, Any],
        gateway: NamedDependency[GatewayState],
        jobs: NamedDependency[Jobs],
        data: ImportRequest,
    ) -> dict[str, Any]:
        """Check the request, then start the import as a job; poll GET /admin/jobs/{id} for its progress."""
        action = "models.import" if data.encrypt else "models.add"
        audit = gateway.registry.audit
        actor = request.user.id  # read now: the job ends after this request is gone
        try:
            source = _checked_file(data.path)
            _check_names_free(gateway, [data.name, *data.aliases])
            if data.encrypt:
                gateway.store.refuse_if_locked()
        except ApplianceError as error:
            audit.record(
                action,
                outcome="failure",
                actor_key_id=actor,
                target=data.name,
                detail=error.message,
            )
            raise
        aliases = tuple(data.aliases)

        def encrypt_into_store(progress: ProgressCallback) -> dict[str, Any]:
            store = gateway.store.store()
            model = store.import_gguf(source, name=data.name, aliases=aliases, progress=progress)
            return _model_object(model, encrypted=True)

        def register_in_place(progress: ProgressCallback) -> dict[str, Any]:
            # Reading the header also hashes the whole file: that is the long part of a plain add.
            model = gateway.registry.models.add(
                source, read_gguf_info(source), name=data.name, aliases=aliases
            )
            return _model_object(model, encrypted=False)

        def audit_outcome(job: Job) -> None:
            failed = job.error is not None
            audit.record(
                action,
                outcome="failure" if failed else "success",
                actor_key_id=actor,
                target=data.name,
                detail=str(job.error["message"]) if job.error else str(source),
            )

        job = jobs.start(
            action,
            data.name,
            source.stat().st_size,
            encrypt_into_store if data.encrypt else register_in_place,
            audit_outcome,
        )
        return job.as_object()
