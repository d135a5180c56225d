"""`appliance models import-bundle`: models reach a disconnected box the way code does, in a signed bundle.

The bundle is verified end to end by the installer's own verifier (signature over the manifest by a key the
prefix trusts, then every member against its signed size and SHA-256) while it is unpacked into a private
folder of the home (appliance/store/staging.py: removed on every way out, and a killed import's by the next
store open or gateway start); the store reads the weights only once the whole bundle has verified, then
encrypts each model exactly as `appliance models import` does. A refused bundle leaves the store and the
registry as they were. POST /admin/models/import-bundle (api/admin/bundle_import.py) runs the same steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.store_access import open_home_store, progress_line
from appliance.errors import BundleRefusedError, InvalidRequestError
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.safe_files import folder_files, size_of
from appliance.settings import home_from_environment
from appliance.store.format import Progress
from appliance.store.staging import staging_folder
from appliance.store.store import AWQ, ModelStore
from installer.bundled_models import ModelMeta, read_model_meta
from installer.bundlefile import read_bundle, read_signed_manifest
from installer.crypto import default_verifier
from installer.errors import InstallerError
from installer.limits import Limits
from installer.manifest import TRUST_FILE, Manifest
from installer.state import Prefix
from installer.trust import TrustedKeys, pin_trust_files

MODELS_PROFILE = "models"
REGISTRY_FILE = "registry.json"

TrustOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust",
        help="a public key (or root document) to verify with, for a home that is not an installed "
        "prefix's data directory (an installed prefix's own trusted keys decide there); repeatable",
    ),
]


@dataclass(frozen=True)
class BundledModel:
    """One model of a verified bundle: its registry facts and where its weights were unpacked."""

    meta: ModelMeta
    weights: Path


def bundle_trust(home: Path, trust_files: list[Path], option: str = "--trust") -> TrustedKeys:
    """The keys a bundle must be signed by: the installed prefix's (home is PREFIX/data), else the public
    keys named by `option` (the CLI's --trust, the admin API's "trust")."""
    prefix = Prefix(home.parent)
    if prefix.data == home and prefix.exists():
        if trust_files:
            raise InvalidRequestError(
                f"{home} is the data of the installed prefix {prefix.root}: its trusted keys decide "
                f"(change them with `installer.pyz trust`), so {option} is not taken here",
                param="trust",
            )
        try:
            return prefix.load().trust
        except InstallerError as error:
            raise BundleRefusedError(f"refused: {error.message}") from None
    if not trust_files:
        raise InvalidRequestError(
            f"no trusted keys: {home} is not an installed prefix's data directory; "
            f"give the signer's public key with {option} KEY.pub",
            param="trust",
        )
    try:
        return pin_trust_files(trust_files)
    except InstallerError as error:
        raise InvalidRequestError(error.message, param="trust") from None


def check_bundle(bundle: Path, trust: TrustedKeys) -> Manifest:
    """The bundle's signed manifest, checked at once (signature, signer, expiry, profile): no member is
    read, so a bundle from an untrusted signer is refused before its gigabytes are; BundleRefusedError."""
    try:
        manifest = read_signed_manifest(
            bundle, trust, now=int(time.time()), verifier=default_verifier(), limits=Limits()
        )
    except InstallerError as error:
        raise BundleRefusedError(f"{bundle}: refused: {error.message}") from None
    return _model_bundle_only(bundle, manifest)


def _model_bundle_only(bundle: Path, manifest: Manifest) -> Manifest:
    """Refuse a code bundle, or a model bundle that would change trust."""
    if manifest.profile != MODELS_PROFILE:
        raise BundleRefusedError(
            f"{bundle}: refused: it is a {manifest.profile!r} bundle; install code bundles with "
            "`installer.pyz install` (import-bundle takes bundles built with --profile models)"
        )
    if manifest.member(TRUST_FILE) is not None:
        raise BundleRefusedError(f"{bundle}: refused: a model bundle carries no trust change")
    return manifest


def verify_and_unpack(bundle: Path, trust: TrustedKeys, into: Path, show: Progress | None = None) -> Manifest:
    """Verify the whole bundle while unpacking it into `into` (a fresh folder); raise BundleRefusedError.
    `show` gets the running total of bytes verified (default: the CLI's progress line)."""
    size = bundle.stat().st_size if bundle.is_file() else 0
    show = show or progress_line("verifying", size)
    try:
        verified = read_bundle(
            bundle,
            trust,
            now=int(time.time()),
            installed_version=None,  # models are kept apart by name and version, not by bundle version
            allow_downgrade=False,
            verifier=default_verifier(),
            limits=Limits(),
            extract_to=into,
            progress=_counter(show),
        )
    except InstallerError as error:
        raise BundleRefusedError(f"{bundle}: refused: {error.message}") from None
    show(size)  # the members verified; the rest of the file was headers
    return _model_bundle_only(bundle, verified.manifest)


def _counter(show: Callable[[int], None]) -> Callable[[int], None]:
    """Bytes verified so far, for a display that takes a running total."""
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        show(done[0])

    return advance


def bundled_models(manifest: Manifest, root: Path) -> list[BundledModel]:
    """Every model of a verified, unpacked bundle, its registry.json read and its weights located."""
    found: list[BundledModel] = []
    for member in manifest.members:
        if member.role != "model" or not member.path.endswith(f"/{REGISTRY_FILE}"):
            continue
        folder = member.path.rsplit("/", 1)[0]
        try:
            meta = read_model_meta(root / member.path)
        except InstallerError as error:
            raise BundleRefusedError(f"refused: {error.message}") from None
        if meta.format == AWQ:
            (root / member.path).unlink()  # read: the folder is now the model's files only
            found.append(BundledModel(meta, root / folder))
            continue
        if meta.format != "gguf" or manifest.member(f"{folder}/{meta.file}") is None:
            raise BundleRefusedError(
                f"refused: model {meta.name}: format {meta.format!r}, file {meta.file!r} is not a bundled "
                "GGUF file or AWQ folder"
            )
        found.append(BundledModel(meta, root / folder / meta.file))
    if not found:
        raise BundleRefusedError("refused: the bundle holds no model")
    return found


def _cli_progress(name: str, total: int) -> Progress:
    return progress_line(f"encrypting {name}", total)


def import_bundled(
    store: ModelStore,
    registry: Registry,
    models: list[BundledModel],
    origin: str,
    progress_for: Callable[[str, int], Progress] = _cli_progress,
    actor: str | None = None,
) -> list[ModelInfo]:
    """Encrypt each model into the store and register it, as `models import` does; names are checked
    for all of them first, so a taken name refuses the bundle before any model is imported.
    `progress_for(name, bytes)` shows one model's encryption; `actor` is the admin API key, if any."""
    for model in models:
        meta = model.meta
        if meta.format == AWQ and meta.version is not None:
            raise InvalidRequestError(f"model {meta.name}: versions are for GGUF files", param="version")
        registry.models.check_names_free(meta.name, meta.aliases, new_version=meta.version is not None)
    imported: list[ModelInfo] = []
    for model in models:
        meta = model.meta
        if meta.format == AWQ:
            progress = progress_for(meta.name, size_of(folder_files(model.weights)))
            info = store.import_awq_folder(
                model.weights, name=meta.name, aliases=meta.aliases, progress=progress
            )
        else:
            progress = progress_for(meta.name, model.weights.stat().st_size)
            info = store.import_gguf(
                model.weights, name=meta.name, aliases=meta.aliases, progress=progress, version=meta.version
            )
        registry.audit.record(
            "models.import", outcome="success", actor_key_id=actor, target=info.name, detail=origin
        )
        imported.append(info)
    return imported


def models_import_bundle(bundle: Path, trust: TrustOption = None) -> None:
    """Verify a signed model bundle (./build.sh bundle --profile models), then encrypt its models into the
    store and register them; a bundle that does not verify is refused and nothing is written."""
    home = home_from_environment()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    trusted = bundle_trust(home, list(trust or ()))
    check_bundle(bundle, trusted)  # an untrusted signer is refused before the bundle is read through
    # In the home: on the filesystem sized for models, private to the service, removed whatever happens.
    with staging_folder(home) as root:
        _, store, registry = open_home_store(import_folders=(root,))
        manifest = verify_and_unpack(bundle, trusted, root / "bundle")
        models = bundled_models(manifest, root / "bundle")
        origin = f"cli: bundle {bundle.name} version {manifest.version}, key {manifest.key_id[:16]}"
        imported = import_bundled(store, registry, models, origin)
    for model in imported:
        note = "" if model.active else "; switch with `appliance models activate`"
        typer.echo(
            f"imported {model.name} version {model.version} ({model.architecture}, {model.quantization}) "
            f"from the signed bundle into the encrypted store{note}"
        )
    typer.echo(f"bundle {bundle.name}: version {manifest.version}, signed by key {manifest.key_id[:16]}")


def register_model_bundle_commands(models_app: typer.Typer) -> None:
    """Attach `models import-bundle` to the CLI's `models` group."""
    models_app.command("import-bundle")(models_import_bundle)
