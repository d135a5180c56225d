"""Offline install into a prefix: verify, extract, venv, pip, data, migrations, models, planner, switch.

Order matters for crash safety (kill -9 at any point must leave the previous version current):
the bundle is verified completely before anything is written; the new version is built in its own
folder; state.json lists it only once it is complete; `current` is switched last with one rename.
The data directory is shared by all versions (installer/data.py): before the new code migrates it, the
registry is snapshot; a failed install puts the snapshot back, and so does the next run after a kill -9
that left the registry at a revision the current version does not know.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from installer.bundled_models import import_models
from installer.bundlefile import VerifiedBundle, read_bundle
from installer.crypto import Verifier
from installer.data import (
    check_schema,
    data_owner,
    own_data,
    prepare_data,
    put_back,
    restore_registry,
    share_models,
    snapshot_registry,
    undo_interrupted_upgrade,
)
from installer.errors import InstallerError, InstallStepError, StateError, UsageError
from installer.limits import Limits
from installer.manifest import MANIFEST_NAME, Manifest, manifest_bytes
from installer.ready import read_endpoint
from installer.state import InstalledVersion, InstallState, Prefix, atomic_write
from installer.steps import Report, clean_env, run_step
from installer.systemd import (
    SERVICE_USER,
    SOCKET_NAME,
    UNIT_NAME,
    check_units,
    ensure_service_user,
    listen_stream,
    socket_text,
    unit_text,
)
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
    service_user: str = SERVICE_USER  # with a unit: the unprivileged user the service runs as
    limits: Limits = field(default_factory=Limits)


@dataclass
class Upgrade:
    """What an install did to the shared data, so that a failure can undo it."""

    before: int | None
    snapshot: Path | None = None
    migrated: bool = False
    quiesce: Callable[[], None] = lambda: None  # stops a running service before the data changes


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


def _build_version(
    prefix: Prefix,
    manifest: Manifest,
    root: Path,
    options: Options,
    python: str,
    upgrade: Upgrade,
    report: Report,
) -> None:
    """Fill the version's folder (venv, packages) and bring the shared data up to its code."""
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
    upgrade.quiesce()
    report("step: data")
    env = clean_env(prepare_data(prefix, root, report))
    if upgrade.before is not None:
        upgrade.snapshot = snapshot_registry(prefix, upgrade.before)
        if upgrade.snapshot is not None:
            report(f"data: registry of version {upgrade.before} kept in {upgrade.snapshot}")
    appliance = str(root / "venv" / "bin" / "appliance")
    report("step: migrations")
    upgrade.migrated = True
    run_step("database migrations", [appliance, "init"], env)  # `init` opens the registry, which migrates it
    report("step: models")
    import_models(prefix, manifest, root, env, report, options.bundle, options.trust_files)
    report("step: planner")
    # The hardware planner is another issue; run it only when the installed version has `appliance plan`.
    probe = subprocess.run(
        [appliance, "plan", "--help"], env=env, capture_output=True, timeout=120, check=False
    )
    if probe.returncode == 0:
        plan = run_step("hardware planner", [appliance, "plan", "--json"], env)
        atomic_write(Path(env["APPLIANCE_HOME"]) / "plan.json", plan.encode("utf-8"), mode=0o600)
        report("planner: plan written to data/plan.json")
    else:
        report("planner: this version has no `appliance plan`; nothing planned")
    if options.unit_dir is not None:
        report("step: systemd")
        service, socket = _units(prefix, root, root, manifest, options)
        report(check_units(root / "unit-check", service, socket))
        prefix.run.mkdir(mode=0o700, exist_ok=True)  # where the unit's start waits for data.lock
        if os.geteuid() == 0:
            uid, gid = ensure_service_user(options.service_user, report)
            own_data(prefix, uid, gid)
            share_models(prefix, gid)
            report(f"data: {prefix.data} belongs to {options.service_user}; code and weights to root")
    elif (owner := data_owner(prefix)) is not None:
        # An earlier install gave the data to a service user: keep it so, and the new weights readable.
        own_data(prefix, *owner)
        share_models(prefix, owner[1])


def _units(prefix: Prefix, root: Path, serves: Path, manifest: Manifest, options: Options) -> tuple[str, str]:
    """The service unit (serving the version in `serves`) and the socket unit on the [server] address of
    the data's settings, read with the Python of the version in `root`."""
    endpoint = read_endpoint(prefix, root)
    gpu = manifest.profile == "gpu"
    service = unit_text(prefix.root, serves, options.allow_ips, gpu, options.service_user)
    socket = socket_text(prefix.root, listen_stream(endpoint.host, endpoint.port), options.allow_ips)
    return service, socket


def _check_space(root: Path, manifest: Manifest) -> None:
    """Refuse, before writing anything, an install the disk cannot hold (members, and as much again)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    need = sum(m.size for m in manifest.members) * 2  # the extracted bundle plus the venv it installs
    free = shutil.disk_usage(existing).free
    if free < need:
        raise InstallStepError(f"not enough space in {root}: need {need / 1e9:.1f} GB, {free / 1e9:.1f} free")


def install(
    options: Options, verifier: Verifier, report: Report, quiesce: Callable[[], None] = lambda: None
) -> Manifest:
    """Install a bundle; on any failure the previous version stays current and the new folder goes."""
    prefix = Prefix(options.prefix)
    verified = verify(options, verifier, report)  # pass 1: nothing written before this passes
    manifest = verified.manifest
    python = python_for(manifest.target, options.python)
    _check_space(prefix.root, manifest)
    umask = os.umask(0o022)  # code and weights readable by the service user whatever the admin's umask
    try:
        with prefix.locked(), prefix.data_locked():
            _install_locked(prefix, verified, options, verifier, python, report, quiesce)
    finally:
        os.umask(umask)
    return manifest


def _install_locked(
    prefix: Prefix,
    verified: VerifiedBundle,
    options: Options,
    verifier: Verifier,
    python: str,
    report: Report,
    quiesce: Callable[[], None],
) -> None:
    """The install under the prefix's lock: debris, the version's folder, then `current`."""
    manifest = verified.manifest
    state = prefix.load()
    before = prefix.current()
    trust = initial_trust(prefix, state, options.trust_files)
    for gone in prefix.remove_debris(state):
        report(f"removed debris of an interrupted install: {gone}")
    if (undone := undo_interrupted_upgrade(prefix)) is not None:
        report(f"removed debris of an interrupted install: registry put back from {undone}")
    if any(v.version == manifest.version for v in state.installed):
        # Reinstalling a version that is not current (after a rollback): rebuild it from scratch.
        state.installed = [v for v in state.installed if v.version != manifest.version]
        prefix.save(state)
    root = prefix.version_dir(manifest.version)
    shutil.rmtree(root, ignore_errors=True)
    upgrade = Upgrade(before, quiesce=quiesce)
    try:
        try:
            _install_version(prefix, state, verified, options, verifier, python, upgrade, trust, report)
        except OSError as error:  # a full disk or a permission: one line, like every other failure
            raise InstallStepError(f"install failed: {error}") from None
    except BaseException as error:
        shutil.rmtree(root, ignore_errors=True)
        if upgrade.migrated and upgrade.snapshot is not None:
            put_back(prefix, upgrade.snapshot)  # the previous version stays current with its data
        if isinstance(error, InstallerError):
            # From disk, not memory: the in-memory state may already list the version that failed.
            on_disk = prefix.load()
            on_disk.record("install", "failed", f"version {manifest.version}: {error.message}")
            prefix.save(on_disk)
        raise
    # The version is complete and listed in state.json; only now does `current` move to it.
    prefix.switch_current(manifest.version)


def _install_version(
    prefix: Prefix,
    state: InstallState,
    verified: VerifiedBundle,
    options: Options,
    verifier: Verifier,
    python: str,
    upgrade: Upgrade,
    trust: TrustedKeys,
    report: Report,
) -> None:
    """Build the version folder and record it as complete in state.json (not yet current)."""
    manifest, before = verified.manifest, upgrade.before
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
    # What `installer doctor` checks the installed files against (the verified manifest, re-encoded).
    atomic_write(root / MANIFEST_NAME, manifest_bytes(manifest))
    _build_version(prefix, manifest, root, options, python, upgrade, report)
    report("step: commit")
    if options.unit_dir is not None:
        service, socket = _units(prefix, root, prefix.current_link, manifest, options)
        atomic_write(options.unit_dir / SOCKET_NAME, socket.encode())
        atomic_write(options.unit_dir / UNIT_NAME, service.encode())
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


def rollback(
    prefix_root: Path,
    report: Report,
    restore_data: bool = False,
    quiesce: Callable[[], None] = lambda: None,
) -> int:
    """Make the newest installed version below the current one current again.

    The data is shared: keys and models created since the upgrade survive. When the older code does not
    know the registry's schema, the rollback is refused unless `restore_data` puts back the snapshot taken
    at the upgrade from that version (what was created since is then gone). Either way today's registry is
    kept as the current version's snapshot, which a return from an older version that is not ready uses."""
    prefix = Prefix(prefix_root)
    with prefix.locked():
        state = prefix.load()
        current = prefix.current()
        older = sorted(v.version for v in state.installed if current is None or v.version < current)
        if current is None or not older:
            raise StateError(f"nothing to roll back to (current: {current})")
        target = older[-1]
        outcome = ("rollback", "success", f"version {current} -> {target}")
        came_from = current

        def quiesce_and_keep() -> None:
            quiesce()
            if not restore_data:  # (a restore keeps today's registry itself)
                snapshot_registry(prefix, came_from)  # what a return from an unready `target` puts back

        with prefix.data_locked():
            _switch_to_older(prefix, state, target, current, restore_data, quiesce_and_keep, outcome, report)
    report(f"current is now version {target} (was {current})")
    return target


def _switch_to_older(
    prefix: Prefix,
    state: InstallState,
    target: int,
    current: int,
    restore_data: bool,
    quiesce: Callable[[], None],
    outcome: tuple[str, str, str],
    report: Report,
) -> None:
    """Make `target` current again under the prefix's lock: its snapshot of the registry put back when
    `restore_data`, else the registry's schema checked first (so a refusal stops nothing); `quiesce` runs
    just before the data is touched; the switch recorded in the state as (action, outcome, detail)."""
    action, result, detail = outcome
    try:
        if restore_data:
            quiesce()
            snapshot = restore_registry(prefix, target, current)
            report(f"data: registry restored from {snapshot}")
            detail += f", data restored from {snapshot.name}"
        else:
            check_schema(prefix, target)
            quiesce()
    finally:
        # Opening the registry as root may leave a root-owned -wal or -shm the service cannot open.
        if (owner := data_owner(prefix)) is not None:
            own_data(prefix, *owner)
    prefix.switch_current(target)
    state.record(action, result, detail)
    prefix.save(state)


def return_to(
    prefix_root: Path,
    previous: int,
    failed: int,
    why: str,
    report: Report,
    *,
    action: str = "install",
    restore: bool | None = None,
    quiesce: Callable[[], None] = lambda: None,
) -> None:
    """After `failed` did not become ready: `previous` is current again, audited as `action` "returned";
    `quiesce` runs under the lock before the data is touched.

    The registry goes back to `previous`'s snapshot when `restore`; by default when there is one (an
    upgrade's new version migrated the data, and nothing was created under a version that never served).
    A rollback's return restores only when the rollback restored data or the older version migrated it."""
    prefix = Prefix(prefix_root)
    with prefix.locked():
        state = prefix.load()
        if prefix.current() != failed or not any(v.version == previous for v in state.installed):
            raise StateError(f"cannot return to version {previous}: version {failed} is not current")
        outcome = (
            action,
            "returned",
            f"version {failed} did not become ready ({why}); returned to version {previous}",
        )
        if restore is None:
            restore = prefix.snapshot_of(previous).is_file()
        with prefix.data_locked():
            _switch_to_older(prefix, state, previous, failed, restore, quiesce, outcome, report)
    report(f"current is now version {previous} again (was {failed})")
