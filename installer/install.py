"""Offline install into a prefix: verify, extract, venv, pip, home, migrations, models, planner, switch.

Order matters for crash safety (kill -9 at any point must leave the previous version current):
the bundle is verified completely before anything is written; the new version is built in its own
folder; state.json lists it only once it is complete; `current` is switched last with one rename.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from installer.bundled_models import import_models
from installer.bundlefile import VerifiedBundle, read_bundle
from installer.crypto import Verifier
from installer.errors import InstallerError, InstallStepError, StateError, UsageError
from installer.limits import Limits
from installer.manifest import Manifest
from installer.state import InstalledVersion, InstallState, Prefix, atomic_write
from installer.steps import Report, clean_env, run_step
from installer.systemd import check_unit, unit_text
from installer.target_python import python_for
from installer.trust import TrustedKeys, pin_trust_files

STEP_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Options:
    """What the admin asked for on the command line."""

    bundle: Path
    prefix: Path
    trust_files: tuple[Path, ...] = ()
    allow_downgrade: bool = False
    python: str | None = None
    unit_dir: Path | None = None  # None: no systemd unit
    allow_ips: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


def initial_trust(prefix: Prefix, state: InstallState, trust_files: tuple[Path, ...]) -> TrustedKeys:
    """The keys to verify with: the pinned ones, or on a first install the ones given with --trust."""
    if prefix.exists():
        if trust_files:
            raise UsageError(
                "--trust is only for a first install; use `installer trust update ROOT.json` (or `trust add`)"
            )
        return state.trust
    if not trust_files:
        raise UsageError("first install: pin the signing key(s) with --trust PATH.pub or --trust root.json")
    return pin_trust_files(trust_files)


def verify(options: Options, verifier: Verifier, report: Report) -> VerifiedBundle:
    """Verify a bundle against the prefix's state without writing anything."""
    prefix = Prefix(options.prefix)
    state = prefix.load()
    trust = initial_trust(prefix, state, options.trust_files)
    if not prefix.exists():
        for key in {**trust.root_keys, **trust.keys}.values():
            report(f"trusting key {key.fingerprint} (compare it with the one you were given)")
    return read_bundle(
        options.bundle,
        trust,
        now=int(time.time()),
        installed_version=prefix.current(),
        highest_version=state.highest_version(),
        allow_downgrade=options.allow_downgrade,
        verifier=verifier,
        limits=options.limits,
    )


def _prepare_home(prefix: Prefix, root: Path) -> Path:
    """The new version's data: a copy of the current version's, so rollback returns to matching data."""
    home = root / "home"
    current = prefix.current()
    previous = prefix.version_dir(current) / "home" if current is not None else None
    if previous is not None and previous.is_dir():
        shutil.copytree(
            previous, home, symlinks=True, ignore=shutil.ignore_patterns("run", "*.sock", "*.log")
        )
    else:
        home.mkdir(mode=0o700)
        config = root / "bundle" / "config" / "settings.toml"
        if config.is_file():
            shutil.copyfile(config, home / "settings.toml")
    return home


def _build_version(
    prefix: Prefix, manifest: Manifest, root: Path, options: Options, python: str, report: Report
) -> None:
    report("step: venv")
    run_step("venv", [python, "-m", "venv", str(root / "venv")], clean_env())
    report("step: pip")
    pip = [
        str(root / "venv" / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--no-index",
        "--only-binary",
        ":all:",
    ]
    pip += ["--no-cache-dir", "--find-links", str(root / "bundle" / "wheels"), *manifest.requirements]
    run_step("pip install", pip, clean_env())
    report("step: home")
    env = clean_env(_prepare_home(prefix, root))
    appliance = str(root / "venv" / "bin" / "appliance")
    report("step: migrations")
    run_step("database migrations", [appliance, "init"], env)  # `init` opens the registry, which migrates it
    report("step: models")
    import_models(prefix, manifest, root, env, report)
    report("step: planner")
    # The hardware planner is another issue; run it only when the installed version has `appliance plan`.
    probe = subprocess.run(
        [appliance, "plan", "--help"], env=env, capture_output=True, timeout=120, check=False
    )
    if probe.returncode == 0:
        plan = run_step("hardware planner", [appliance, "plan", "--json"], env)
        atomic_write(Path(env["APPLIANCE_HOME"]) / "plan.json", plan.encode("utf-8"), mode=0o600)
        report("planner: plan written to home/plan.json")
    else:
        report("planner: this version has no `appliance plan`; nothing planned")
    if options.unit_dir is not None:
        report("step: systemd")
        check = root / "appliance-check.service"
        check.write_text(unit_text(prefix.root, root, options.allow_ips, manifest.profile == "gpu"))
        report(check_unit(check))
        check.unlink()


def _check_space(root: Path, manifest: Manifest) -> None:
    """Refuse, before writing anything, an install the disk cannot hold (members, and as much again)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    need = sum(m.size for m in manifest.members) * 2  # the extracted bundle plus the venv it installs
    free = shutil.disk_usage(existing).free
    if free < need:
        raise InstallStepError(f"not enough space in {root}: need {need / 1e9:.1f} GB, {free / 1e9:.1f} free")


def install(options: Options, verifier: Verifier, report: Report) -> Manifest:
    """Install a bundle; on any failure the previous version stays current and the new folder goes."""
    prefix = Prefix(options.prefix)
    verified = verify(options, verifier, report)  # pass 1: nothing written before this passes
    manifest = verified.manifest
    python = python_for(manifest.target, options.python)
    _check_space(prefix.root, manifest)
    with prefix.locked():
        state = prefix.load()
        before = prefix.current()
        trust = initial_trust(prefix, state, options.trust_files)
        for gone in prefix.remove_debris(state):
            report(f"removed debris of an interrupted install: {gone}")
        if any(v.version == manifest.version for v in state.installed):
            # Reinstalling a version that is not current (after a rollback): rebuild it from scratch.
            state.installed = [v for v in state.installed if v.version != manifest.version]
            prefix.save(state)
        root = prefix.version_dir(manifest.version)
        shutil.rmtree(root, ignore_errors=True)
        try:
            try:
                _install_version(prefix, state, verified, options, verifier, python, before, trust, report)
            except OSError as error:  # a full disk or a permission: one line, like every other failure
                raise InstallStepError(f"install failed: {error}") from None
        except BaseException as error:
            shutil.rmtree(root, ignore_errors=True)
            if isinstance(error, InstallerError):
                # From disk, not memory: the in-memory state may already list the version that failed.
                on_disk = prefix.load()
                on_disk.record("install", "failed", f"version {manifest.version}: {error.message}")
                prefix.save(on_disk)
            raise
        # The version is complete and listed in state.json; only now does `current` move to it.
        prefix.switch_current(manifest.version)
    return manifest


def _install_version(
    prefix: Prefix,
    state: InstallState,
    verified: VerifiedBundle,
    options: Options,
    verifier: Verifier,
    python: str,
    before: int | None,
    trust: TrustedKeys,
    report: Report,
) -> None:
    """Build the version folder and record it as complete in state.json (not yet current)."""
    manifest = verified.manifest
    root = prefix.version_dir(manifest.version)
    prefix.versions.mkdir(parents=True, exist_ok=True)
    root.mkdir()
    report("step: extract")
    # Pass 2 verifies again while writing: the file may have changed since pass 1.
    again = read_bundle(
        options.bundle,
        trust,
        now=int(time.time()),
        installed_version=before,
        highest_version=state.highest_version(),
        allow_downgrade=options.allow_downgrade,
        verifier=verifier,
        limits=options.limits,
        extract_to=root / "bundle",
    )
    if again.manifest != manifest:
        raise StateError("bundle changed while it was being installed")
    _build_version(prefix, manifest, root, options, python, report)
    report("step: commit")
    if options.unit_dir is not None:
        unit = unit_text(prefix.root, prefix.current_link, options.allow_ips, manifest.profile == "gpu")
        atomic_write(options.unit_dir / "appliance.service", unit.encode())
    if verified.trust_update is not None:
        trust = trust.rotated(verified.trust_update)
        report(f"trusted keys updated to version {trust.version}")
    state.trust = trust
    state.installed.append(
        InstalledVersion(manifest.version, manifest.profile, manifest.key_id, int(time.time()))
    )
    downgrade = (
        " (downgrade allowed by the admin)" if before is not None and manifest.version <= before else ""
    )
    state.record("install", "success", f"version {manifest.version}, previous {before}{downgrade}")
    prefix.save(state)


def rollback(prefix_root: Path, report: Report) -> int:
    """Make the newest installed version below the current one current again."""
    prefix = Prefix(prefix_root)
    with prefix.locked():
        state = prefix.load()
        current = prefix.current()
        older = sorted(v.version for v in state.installed if current is None or v.version < current)
        if current is None or not older:
            raise StateError(f"nothing to roll back to (current: {current})")
        prefix.switch_current(older[-1])
        state.record("rollback", "success", f"version {current} -> {older[-1]}")
        prefix.save(state)
    report(f"current is now version {older[-1]} (was {current})")
    return older[-1]
