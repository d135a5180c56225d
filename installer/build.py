"""`python -m installer.build bundle|keygen|trust`: the connected side that writes signed bundles and keys.

Only this step reaches the network (PyPI through pip, for wheels not cached yet). Wheels of the
dependencies are cached under .cache/bundle/ keyed by the exact pinned set, so a second build is quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipapp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installer.bundlefile import read_bundle
from installer.crypto import CryptographyVerifier
from installer.limits import Limits
from installer.manifest import TRUST_FILE, Target
from installer.pack import BundleSpec, Source, describe, generate_key_pair, public_key_of, write_bundle
from installer.progress import Progress
from installer.rootmeta import parse_root_document
from installer.rootsign import add_parser as add_trust_parser
from installer.rootsign import command as trust_command
from installer.trust import TrustedKeys

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bundle"
DEFAULT_KEY_DIR = Path.home() / ".config" / "appliance" / "keys"
DAY = 86_400


@dataclass(frozen=True)
class ModelSpec:
    """One model of a recipe: a GGUF file or (for vLLM) a folder of weights."""

    name: str
    aliases: tuple[str, ...]
    source: Path
    format: str
    sha256: str | None
    optional: bool
    version: str | None = None  # a model bundle's --model-version: a new version of a registered model


@dataclass(frozen=True)
class Recipe:
    """What a profile's bundle holds (bundles/<profile>.toml)."""

    name: str
    profile: str
    expires_days: int
    requirements: tuple[str, ...]
    extras: tuple[str, ...]
    extra_packages: tuple[str, ...]
    models: tuple[ModelSpec, ...]


def load_recipe(path: Path) -> Recipe:
    """Read a recipe; relative model paths are relative to the repository."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    models = tuple(
        ModelSpec(
            name=m["name"],
            aliases=tuple(m.get("aliases", ())),
            source=REPO / m["source"],
            format=m.get("format", "gguf"),
            sha256=m.get("sha256"),
            optional=bool(m.get("optional", False)),
        )
        for m in raw.get("models", [])
    )
    return Recipe(
        name=raw["name"],
        profile=raw["profile"],
        expires_days=int(raw.get("expires_days", 365)),
        requirements=tuple(raw["requirements"]),
        extras=tuple(raw.get("extras", ())),
        extra_packages=tuple(raw.get("extra_packages", ())),
        models=models,
    )


MODELS_PROFILE = "models"
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
GGUF_MAGIC = b"GGUF"


class _AddModel(argparse.Action):
    """`--model PATH` starts a model; the `--name`, `--alias` and `--model-version` after it describe it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        namespace.models = [*(namespace.models or []), {"source": Path(values), "aliases": []}]


class _DescribeModel(argparse.Action):
    """`--name`, `--alias` or `--model-version`: a fact about the latest `--model`."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        if not namespace.models:
            parser.error(f"{option} describes the --model before it; give --model first")
        model, key = namespace.models[-1], self.dest.removeprefix("model_")
        if key == "aliases":
            model["aliases"].append(values)
        elif key in model:
            parser.error(f"{option} given twice for --model {model['source']}")
        else:
            model[key] = values


def models_recipe(models: list[dict[str, Any]], expires_days: int) -> Recipe:
    """The recipe of a model bundle: the weights named on the command line, no wheels and no installer."""
    specs = []
    for model in models:
        source: Path = model["source"].resolve()
        if source.is_dir():
            kind = "awq"  # vLLM's weights folder; the appliance checks it is an AWQ model when importing
        elif source.is_file():
            with source.open("rb") as stream:
                if stream.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                    raise SystemExit(f"build: {source} is not a GGUF file (nor an AWQ model folder)")
            kind = "gguf"
        else:
            raise SystemExit(f"build: --model {source}: no such file or folder")
        name = model.get("name") or (source.stem if kind == "gguf" else source.name).lower()
        if not _MODEL_NAME.fullmatch(name):
            raise SystemExit(f"build: model name {name!r} is not [a-z0-9][a-z0-9._-]*; give one with --name")
        version = model.get("version")
        specs.append(ModelSpec(name, tuple(model["aliases"]), source, kind, None, False, version))
    if len({spec.name for spec in specs}) != len(specs):
        raise SystemExit("build: two --model arguments have the same name; give each its own --name")
    return Recipe("appliance", MODELS_PROFILE, expires_days, (), (), (), tuple(specs))


def host_target() -> Target:
    """The Python and platform the wheels are built for: this build machine's own."""
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return Target(f"{sys.version_info[0]}.{sys.version_info[1]}", platform)


def _pip(*args: str) -> None:
    # Output passes through: pip's own download progress bars are the build's download progress.
    done = subprocess.run([sys.executable, "-m", "pip", *args], check=False)
    if done.returncode != 0:
        raise SystemExit(f"build: pip {args[0]} failed (exit {done.returncode}); see its output above")


def gather_wheels(recipe: Recipe, work: Path) -> list[Path]:
    """Every wheel the target needs: dependencies (cached by their pinned set) plus the project's own."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Pin the dependencies to what this (tested) venv runs; the project itself is built fresh below.
    # Direct references (`name @ URL`) cannot be constraints; they come from the index like the rest.
    pins = "".join(
        line + "\n"
        for line in frozen.splitlines()
        if not line.startswith("airgap-appliance") and " @ " not in line
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    wanted = [
        *project["dependencies"],
        *[r for e in recipe.extras for r in optional[e]],
        *recipe.extra_packages,
    ]
    key = hashlib.sha256(json.dumps([wanted, pins, host_target().python]).encode()).hexdigest()[:16]
    folder = CACHE / f"wheels-{recipe.profile}-{key}"
    if not (folder / ".complete").is_file():
        print(f"==> gathering dependency wheels into {folder}", file=sys.stderr)
        temp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE.parent))
        (temp / "pins.txt").write_text(pins)
        _pip("wheel", "--wheel-dir", str(temp), "--constraint", str(temp / "pins.txt"), *wanted)
        (temp / "pins.txt").unlink()
        (temp / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        temp.rename(folder)
        for stale in CACHE.glob(f"wheels-{recipe.profile}-*"):
            if stale != folder:  # an older pinned set: the cache keeps only the current one
                shutil.rmtree(stale, ignore_errors=True)
    own = work / "project-wheel"
    print("==> building the appliance's own wheel", file=sys.stderr)
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(own), str(REPO))
    return sorted(folder.glob("*.whl")) + sorted(own.glob("*.whl"))


def model_sources(recipe: Recipe, work: Path) -> list[Source]:
    """The weights and a registry.json per model (what `appliance models add` needs on the target)."""
    sources: list[Source] = []
    for model in recipe.models:
        if not model.source.exists():
            if model.optional:
                print(
                    f"==> optional model {model.name}: {model.source} not present, left out", file=sys.stderr
                )
                continue
            raise SystemExit(
                f"build: model {model.name}: {model.source} is missing (./build.sh setup fetches it)"
            )
        files = (
            sorted(p for p in model.source.rglob("*") if p.is_file())
            if model.source.is_dir()
            else [model.source]
        )
        base = model.source if model.source.is_dir() else model.source.parent
        for file in files:
            sources.append(Source(f"models/{model.name}/{file.relative_to(base).as_posix()}", "model", file))
        meta = {"name": model.name, "aliases": list(model.aliases), "format": model.format}
        meta["file"] = model.source.name if model.source.is_file() else "."
        if model.version is not None:
            meta["version"] = model.version
        registry = work / "models" / model.name / "registry.json"
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps(meta, indent=2) + "\n")
        sources.append(Source(f"models/{model.name}/registry.json", "model", registry))
    return sources


def installer_pyz(out: Path) -> Path:
    """The installer as one file, runnable by the target's own python3 (stdlib only)."""
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "installer"
        shutil.copytree(REPO / "installer", package, ignore=shutil.ignore_patterns("__pycache__"))
        zipapp.create_archive(folder, out, interpreter="/usr/bin/env python3", main="installer.cli:main")
    return out


def _check_model_hashes(recipe: Recipe) -> None:
    for model in recipe.models:
        if model.sha256 and model.source.is_file():
            digest = hashlib.sha256(model.source.read_bytes()).hexdigest()
            if digest != model.sha256:
                raise SystemExit(f"build: {model.source} has sha256 {digest}, the recipe says {model.sha256}")


def build_bundle(args: argparse.Namespace) -> Path:
    """Gather, hash, pack, sign and self-verify one bundle; print a summary."""
    models_only = args.profile == MODELS_PROFILE
    if models_only != bool(args.models):
        raise SystemExit("build: --model goes with --profile models, and --profile models needs a --model")
    if models_only and (args.trust_file is not None or args.recipe is not None):
        raise SystemExit("build: a model bundle carries weights only: no --trust-file, no --recipe")
    if models_only:
        recipe = models_recipe(args.models, 365)
    else:
        recipe = load_recipe(args.recipe or REPO / "bundles" / f"{args.profile}.toml")
    key: Path = args.key or DEFAULT_KEY_DIR / "bundle.key"
    if not key.is_file():
        raise SystemExit(f"build: no signing key at {key} (run ./build.sh keygen, or pass --key)")
    version = args.version or int(time.strftime("%Y%m%d%H%M", time.gmtime()))
    out: Path = args.out / f"appliance-{recipe.profile}-{version}.bundle"
    _check_model_hashes(recipe)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=REPO / ".cache") as folder:
        work = Path(folder)
        wheels = [] if models_only else gather_wheels(recipe, work)
        sources = [Source(f"wheels/{w.name}", "wheel", w) for w in wheels]
        sources += model_sources(recipe, work)
        if not models_only:
            pyz = installer_pyz(work / "installer.pyz")
            sources.append(Source("installer/installer.pyz", "installer", pyz))
        if args.trust_file is not None:
            # Carried only if the installer will parse it; its root signatures are checked on the target.
            parse_root_document(args.trust_file.read_bytes(), Limits().max_trust_file_bytes)
            sources.append(Source(TRUST_FILE, "trust", args.trust_file))
        total = sum(s.file.stat().st_size for s in sources)
        with Progress("hashing", total) as bar:
            members = describe(sources, bar.advance)
        now = int(time.time())
        spec = BundleSpec(
            recipe.name,
            recipe.profile,
            version,
            now,
            now + recipe.expires_days * DAY,
            host_target(),
            recipe.requirements,
        )
        with Progress("packing", total) as bar:
            manifest = write_bundle(out, spec, sources, key, members, bar.advance)
    public = public_key_of(key)
    with Progress("verify", total) as bar:
        read_bundle(
            out,
            TrustedKeys().with_keys([public]),
            now=int(time.time()),
            installed_version=None,
            allow_downgrade=False,
            verifier=CryptographyVerifier(),
            limits=Limits(),
            progress=bar.advance,
        )
    if not models_only:
        installer_pyz(args.out / "installer.pyz")  # the copy an admin carries for a first install
    print(
        f"bundle:  {out}\nsize:    {out.stat().st_size / 1e6:.1f} MB\nmembers: {len(manifest.members)} "
        f"({sum(m.role == 'wheel' for m in manifest.members)} wheels)\nversion: {version}\n"
        f"target:  Python {spec.target.python} {spec.target.platform}\nkey:     {public.fingerprint}"
    )
    return out


def keygen(args: argparse.Namespace) -> None:
    """Write a signing key pair (or, with --root, a root key pair) outside the repository."""
    folder: Path = args.out.resolve()
    name: str = args.name or ("root" if args.root else "bundle")
    if folder == REPO or REPO in folder.parents:
        raise SystemExit(f"keygen: {folder} is inside the repository; private keys never go there")
    if (folder / f"{name}.key").exists():
        raise SystemExit(f"keygen: {folder / name}.key exists; pick another --name")
    private, public = generate_key_pair(folder, name)
    print(f"private: {private} (mode 0600; keep it off this repository)\npublic:  {public}")
    print(f"fingerprint: {public_key_of(private).fingerprint}")
    if args.root:
        print("a root key signs trust changes only: move the private key to offline storage now")
    else:
        print(
            f"a target trusts it when installed with `install BUNDLE --trust {public.name}`"
            " (or when a root document lists it: `installer.pyz trust update`)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry."""
    parser = argparse.ArgumentParser(prog="installer.build")
    commands = parser.add_subparsers(dest="command", required=True)
    bundle = commands.add_parser("bundle", help="build dist/appliance-<profile>-<version>.bundle")
    bundle.add_argument("--profile", choices=("cpu", "gpu", MODELS_PROFILE), required=True)
    bundle.add_argument(
        "--model",
        action=_AddModel,
        dest="models",
        help="models profile: a GGUF file or AWQ folder; repeatable",
    )
    bundle.add_argument("--name", action=_DescribeModel, help="the registry name of the --model before it")
    bundle.add_argument("--alias", action=_DescribeModel, dest="aliases", help="an alias of it; repeatable")
    bundle.add_argument(
        "--model-version",
        action=_DescribeModel,
        dest="model_version",
        help="import it as this new version of a model registered already (then `models activate`)",
    )
    bundle.add_argument("--key", type=Path, help=f"private key (default {DEFAULT_KEY_DIR}/bundle.key)")
    bundle.add_argument("--version", type=int, help="integer version (default: UTC YYYYMMDDHHMM)")
    bundle.add_argument("--out", type=Path, default=REPO / "dist")
    bundle.add_argument("--recipe", type=Path, help="recipe file (default bundles/<profile>.toml)")
    bundle.add_argument("--trust-file", type=Path, help="a signed root document to carry (trust change)")
    keys = commands.add_parser("keygen", help="write an Ed25519 signing (or --root) key pair")
    keys.add_argument("--out", type=Path, default=DEFAULT_KEY_DIR)
    keys.add_argument("--name", help="file name without suffix (default: bundle, or root with --root)")
    keys.add_argument("--root", action="store_true", help="a root key: signs trust changes, kept offline")
    add_trust_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "bundle":
        build_bundle(args)
    elif args.command == "trust":
        trust_command(args)
    else:
        keygen(args)


if __name__ == "__main__":
    main()
