"""The bundle's models: weights into the shared PREFIX/models/<sha256>/, registered in the new version."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from installer.errors import BundleFormatError, InstallStepError
from installer.manifest import Manifest, parse_json
from installer.state import Prefix
from installer.steps import Report, run_step

CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelMeta:
    """A model's `registry.json` in the bundle."""

    name: str
    file: str
    format: str
    aliases: tuple[str, ...]
    version: str | None = None  # a model bundle's `--model-version`: a new version of a registered model


def read_model_meta(path: Path) -> ModelMeta:
    """Parse a `registry.json`; any damage is one InstallStepError, never a traceback (the file is
    signed, but a signing mistake must still stop the install with a reason)."""
    try:
        meta = parse_json(path.read_bytes(), f"{path.name} of {path.parent.name}")
    except (OSError, BundleFormatError) as error:
        raise InstallStepError(f"model {path.parent.name}: cannot read {path.name}: {error}") from None
    fields = meta if isinstance(meta, dict) else {}
    name, file, kind = fields.get("name"), fields.get("file"), fields.get("format", "gguf")
    aliases = fields.get("aliases", [])
    if not (isinstance(name, str) and isinstance(file, str) and isinstance(kind, str)):
        raise InstallStepError(f"model {path.parent.name}: {path.name} needs string 'name' and 'file'")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InstallStepError(f"model {name}: {path.name}'s 'aliases' must be a list of strings")
    version = fields.get("version")
    if version is not None and not isinstance(version, str):
        raise InstallStepError(f"model {name}: {path.name}'s 'version' must be a string")
    return ModelMeta(name, file, kind, tuple(aliases), version)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def store_model(prefix: Prefix, source: Path, sha256: str) -> Path:
    """Put a verified weights file into PREFIX/models/<sha256>/ (shared by versions, never changed)."""
    target = prefix.models / sha256 / source.name
    # Reused only when its bytes are the signed ones: the same size proves nothing (a damaged or swapped
    # file would be served by every later version).
    if target.is_file() and not target.is_symlink() and file_sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{source.name}.{os.getpid()}.tmp"
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)  # same filesystem: no copy of gigabytes
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, target)
    return target


def import_models(
    prefix: Prefix,
    manifest: Manifest,
    root: Path,
    env: dict[str, str],
    report: Report,
    bundle: Path,
    trust_files: tuple[Path, ...] = (),
) -> None:
    """Register every GGUF model of the bundle in the new version's registry, weights in PREFIX/models."""
    # "Importing" a model means registering it in the new version's registry, from the shared weights
    # folder: with `appliance models add-bundled`, which verifies the bundle's signature itself and so is
    # allowed under `[store] require_signed`, or, in a version without it, with `models add`.
    appliance = str(root / "venv" / "bin" / "appliance")
    registered = {
        line.split()[0]
        for line in run_step("models list", [appliance, "models", "list"], env).splitlines()[1:]
        if line.strip()
    }
    added: list[tuple[ModelMeta, Path]] = []
    for member in manifest.members:
        if member.role != "model" or not member.path.endswith("/registry.json"):
            continue
        meta = read_model_meta(root / "bundle" / member.path)
        name, weights = meta.name, f"{member.path.rsplit('/', 1)[0]}/{meta.file}"
        if meta.format != "gguf":
            report(f"model {name}: format {meta.format} has no registry support yet; weights kept")
            continue
        if name in registered:
            report(f"model {name}: already registered (carried over with the data)")
            continue
        weights_member = manifest.member(weights)
        if weights_member is None:
            raise InstallStepError(f"model {name}: its registry.json names {weights!r}, not in the manifest")
        added.append((meta, store_model(prefix, root / "bundle" / weights, weights_member.sha256)))
    if not added:
        return
    probe = subprocess.run(
        [appliance, "models", "add-bundled", "--help"], env=env, capture_output=True, timeout=120, check=False
    )
    if probe.returncode == 0:
        # The data's own trust once the prefix has a state; on a first install, the keys just pinned.
        trust = [] if prefix.exists() else [a for f in trust_files for a in ("--trust", str(f.absolute()))]
        argv = [appliance, "models", "add-bundled", str(bundle.absolute()), "--unpacked"]
        argv += [str((root / "bundle").absolute()), "--weights", str(prefix.models.absolute()), *trust]
        for line in run_step("register the bundle's models", argv, env).splitlines():
            report(line)
        return
    for meta, stored in added:
        aliases = [a for alias in meta.aliases for a in ("--alias", alias)]
        argv = [appliance, "models", "add", str(stored), "--name", meta.name, *aliases]
        run_step(f"register model {meta.name}", argv, env)
        report(f"model {meta.name}: registered")
