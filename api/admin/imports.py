"""POST /admin/models/import: register a GGUF file (plain or encrypted into the store) or encrypt an AWQ model
folder, found on the appliance, as a background job. Admin only, audited; cheap checks answer at once, the
long part is the job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency

from api.admin.jobs import Job, Jobs, ProgressCallback
from api.auth import admin_only
from api.state import GatewayState
from appliance.errors import ApplianceError, InvalidRequestError, ModelFileError
from appliance.gguf_info import GGUF_MAGIC, read_gguf_info
from appliance.registry.awq import awq_folder_facts
from appliance.registry.keys import KeyInfo
from appliance.registry.models import ModelInfo
from appliance.safe_files import folder_files, is_folder, open_source_file, size_of

SERVED_LIVE = "the gateway serves it within a second, if it fits beside the models it serves"
ACTIVATE_TO_SERVE = "a new version: activate it to serve it"


class ImportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /admin/models/import: a GGUF file's or AWQ folder's path on the appliance and its name."""

    path: str
    name: str
    encrypt: bool = True
    """Encrypt a copy into the store (the file is left alone); false registers the file where it is."""
    aliases: list[str] = msgspec.field(default_factory=list)
    version: str | None = None
    """Import a GGUF file as a new version of the existing model `name` (then activate it)."""


def _checked_folder(source: Path, data: ImportRequest) -> Path:
    """An AWQ model folder: only into the store (vLLM loads it from private tmpfs), as a new model."""
    if not data.encrypt:
        raise InvalidRequestError(
            f"{source}: an AWQ model folder is imported encrypted only", param="encrypt"
        )
    if data.version is not None:
        raise InvalidRequestError(
            "versions are for GGUF files; give no version for a folder", param="version"
        )
    awq_folder_facts(source, data.name, "")  # ModelFileError for a folder that is not an AWQ model
    return source


def _checked_file(source: Path, allowed: tuple[Path, ...]) -> int:
    """The size of a GGUF file an import may read (appliance/safe_files.py's rules), read from the open
    file: not a link, a regular file, in an allowed folder, starting with the GGUF magic."""
    with open_source_file(source, allowed=allowed) as handle:
        try:
            magic = handle.read(len(GGUF_MAGIC))
        except OSError as error:
            raise ModelFileError(f"{source}: cannot read ({error.strerror})") from error
        size = os.fstat(handle.fileno()).st_size
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{source}: not a GGUF file (it does not start with the GGUF magic)")
    return size


def _checked_source(data: ImportRequest, allowed: tuple[Path, ...]) -> tuple[Path, bool, int]:
    """(the checked path, whether it is an AWQ folder, how many bytes the import reads)."""
    path = Path(data.path)
    if not path.is_absolute():
        raise InvalidRequestError(f"{data.path!r}: give an absolute path on the appliance", param="path")
    if is_folder(path):
        files = folder_files(path, allowed=allowed)  # refuses links and special files in the folder
        return _checked_folder(path, data), True, size_of(files)
    return path, False, _checked_file(path, allowed)


def model_object(model: ModelInfo, encrypted: bool) -> dict[str, Any]:
    """An imported model as the job's result shows it."""
    return {
        "name": model.name,
        "version": model.version,
        "format": model.format,
        "aliases": list(model.aliases),
        "architecture": model.architecture,
        "quantization": model.quantization,
        "size_bytes": model.size_bytes,
        "encrypted": encrypted,
        "note": SERVED_LIVE if model.active else ACTIVATE_TO_SERVE,
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
        allowed = gateway.settings.store.import_roots
        try:
            gateway.settings.store.refuse_unsigned(data.path)
            # The name first: it becomes file and socket names, and a bad one is refused with 400.
            gateway.registry.models.check_names_free(
                data.name, tuple(data.aliases), new_version=data.version is not None
            )
            source, folder, size = _checked_source(data, allowed)
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
            if folder:
                model = store.import_awq_folder(source, name=data.name, aliases=aliases, progress=progress)
            else:
                model = store.import_gguf(
                    source, name=data.name, aliases=aliases, progress=progress, version=data.version
                )
            return model_object(model, encrypted=True)

        def register_in_place(progress: ProgressCallback) -> dict[str, Any]:
            # Reading the header also hashes the whole file: that is the long part of a plain add.
            info = read_gguf_info(source, allowed=allowed)
            model = gateway.registry.models.add(
                source, info, name=data.name, aliases=aliases, version=data.version
            )
            return model_object(model, encrypted=False)

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
            size,
            encrypt_into_store if data.encrypt else register_in_place,
            audit_outcome,
        )
        return job.as_object()
