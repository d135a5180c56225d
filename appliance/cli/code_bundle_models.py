"""`appliance models add-bundled`: a code bundle's own models, registered by the installer during an install,
`[store] require_signed` or not.

The installer verified the bundle, unpacked it and put each model's weights in `PREFIX/models/<sha256>/`.
This command takes no one's word for that (a flag saying "signed" would be a way around require_signed for
anyone who can run the CLI): it verifies the bundle's signed manifest itself with the trusted keys of the
prefix (appliance/cli/model_bundle.py's bundle_trust, the verifier model bundles use), then checks every
registry.json it reads and every weights file it registers against the manifest's SHA-256. Weights are
registered where they are, as `models add` does; a mismatch refuses the bundle before anything is added.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from appliance.cli.model_bundle import MODELS_PROFILE, REGISTRY_FILE, TrustOption, bundle_trust
from appliance.default_settings import write_default_settings
from appliance.errors import BundleRefusedError
from appliance.gguf_info import GgufInfo, read_gguf_info
from appliance.registry.registry import open_registry
from appliance.settings import home_from_environment, load_settings
from installer.bundled_models import ModelMeta, read_model_meta
from installer.bundlefile import read_signed_manifest
from installer.crypto import default_verifier
from installer.errors import InstallerError
from installer.limits import Limits
from installer.manifest import Manifest, Member

CHUNK = 1 << 20


@dataclass(frozen=True)
class SignedModel:
    """One GGUF model of a verified code bundle: its signed registry facts, and its checked weights."""

    meta: ModelMeta
    weights: Path
    info: GgufInfo


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signed_meta(member: Member, unpacked: Path) -> ModelMeta:
    """The registry.json of the unpacked bundle, only if it is the signed one."""
    path = unpacked / member.path
    try:
        if _sha256(path) != member.sha256:
            raise BundleRefusedError(f"refused: {member.path} in {unpacked} is not the signed file")
        return read_model_meta(path)
    except OSError as error:
        raise BundleRefusedError(f"refused: cannot read {path}: {error.strerror}") from None
    except InstallerError as error:
        raise BundleRefusedError(f"refused: {error.message}") from None


def signed_models(manifest: Manifest, unpacked: Path, weights: Path, skip: set[str]) -> list[SignedModel]:
    """Every GGUF model of the bundle not named in `skip`, its weights in `weights/<sha256>/` checked
    against the manifest (the header is read and the file hashed once, as `models add` does)."""
    found: list[SignedModel] = []
    for member in manifest.members:
        if member.role != "model" or not member.path.endswith(f"/{REGISTRY_FILE}"):
            continue
        meta = _signed_meta(member, unpacked)
        if meta.format != "gguf" or meta.name in skip:
            continue
        signed = manifest.member(f"{member.path.rsplit('/', 1)[0]}/{meta.file}")
        if signed is None:
            raise BundleRefusedError(f"refused: model {meta.name}: {meta.file!r} is not in the manifest")
        stored = weights / signed.sha256 / PurePosixPath(signed.path).name
        info = read_gguf_info(stored, allowed=(weights,))
        if info.sha256 != signed.sha256:
            raise BundleRefusedError(f"refused: model {meta.name}: {stored} is not the signed weights")
        found.append(SignedModel(meta, stored, info))
    return found


def models_add_bundled(
    bundle: Path,
    unpacked: Annotated[Path, typer.Option(help="the installer's unpacked copy (PREFIX/versions/N/bundle)")],
    weights: Annotated[Path, typer.Option(help="the weights by SHA-256, as the installer keeps them")],
    trust: TrustOption = None,
) -> None:
    """Register a verified code bundle's GGUF models (the installer's step; allowed under require_signed)."""
    home = home_from_environment()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    trusted = bundle_trust(home, list(trust or ()))
    limits = Limits()
    try:
        manifest = read_signed_manifest(
            bundle, trusted, now=int(time.time()), verifier=default_verifier(), limits=limits
        )
    except InstallerError as error:
        raise BundleRefusedError(f"{bundle}: refused: {error.message}") from None
    if manifest.profile == MODELS_PROFILE:
        raise BundleRefusedError(f"{bundle}: refused: a model bundle goes through `models import-bundle`")
    write_default_settings(home)
    registry = open_registry(load_settings(home).database_path)
    registered = {model.name for model in registry.models.list()}
    models = signed_models(manifest, unpacked, weights, registered)  # all checked before any is added
    origin = f"signed bundle {manifest.name} {manifest.profile} version {manifest.version}"
    origin += f", key {manifest.key_id[:16]}"
    for model in models:
        meta = model.meta
        added = registry.models.add(model.weights, model.info, name=meta.name, aliases=meta.aliases)
        registry.audit.record(
            "models.add", outcome="success", target=added.name, detail=f"{origin}: {added.path}"
        )
        typer.echo(f"model {added.name}: registered from the {origin}")


def register_code_bundle_commands(models_app: typer.Typer) -> None:
    """Attach `models add-bundled` to the CLI's `models` group."""
    models_app.command("add-bundled")(models_add_bundled)
