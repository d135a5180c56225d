"""Upgrades and rollbacks of a serving prefix: stop it (the gateway drains) before the data or `current`
changes, start the new current version after and wait for it to be ready; an upgrade whose version does not
become ready returns to the previous version (data as it left it) and serves that again, audited."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from installer.crypto import Verifier
from installer.data import db_revision
from installer.errors import InstallerError, NotReadyError, ReturnedError
from installer.install import Options, install, return_to, rollback
from installer.manifest import Manifest
from installer.service import Running, running, service_for, stop
from installer.start import Started, start_serving
from installer.state import Prefix
from installer.steps import Report


@dataclass
class Restart:
    """The service that served when the installer began; stopped before the switch, started after."""

    prefix: Prefix
    unit_dir: Path
    report: Report
    was: Running | None = None
    stopped: bool = False

    @classmethod
    def find(cls, prefix: Prefix, unit_dir: Path, report: Report) -> Restart:
        """What serves this prefix now."""
        was = running(service_for(prefix, unit_dir)) if prefix.current() is not None else None
        return cls(prefix, unit_dir, report, was)

    def quiesce(self) -> None:
        """Stop it (SIGTERM: in-flight requests drain) before the data or `current` changes."""
        if self.was is None or self.stopped:
            return
        self.report(f"stopping version {self.was.version} (pid {self.was.pid}) before the switch: it drains")
        stop(service_for(self.prefix, self.unit_dir), self.report)
        self.stopped = True

    def resume(self, timeout_s: float) -> None:
        """After a failure that left `current` as it was: serve it again."""
        if not self.stopped:
            return
        try:
            start_serving(self.prefix, self.unit_dir, timeout_s, self.report)
        except InstallerError as error:
            self.report(f"could not start version {self.prefix.current()} again: {error.message}")


def install_serving(
    options: Options, verifier: Verifier, unit_dir: Path, start: bool, timeout_s: float, report: Report
) -> tuple[Manifest, Started | None]:
    """Install; serve the new version when asked (`start`) or when a service was running."""
    prefix = Prefix(options.prefix.absolute())
    restart = Restart.find(prefix, unit_dir, report)
    previous = prefix.current()
    try:
        manifest = install(options, verifier, report, quiesce=restart.quiesce)
    except InstallerError:
        restart.resume(timeout_s)
        raise
    if not start and not restart.stopped:
        return manifest, None
    had_key = prefix.admin_key.exists()
    try:
        return manifest, start_serving(prefix, unit_dir, timeout_s, report)
    except InstallerError as error:
        if previous is None or previous == manifest.version:
            raise
        if isinstance(error, NotReadyError):
            why = f"{error.reason}; see {error.log}"
        else:
            why = f"{error.message}; see {service_for(prefix, unit_dir).log}"
        if not had_key:  # made in the registry that the return puts back: the previous version makes its own
            prefix.admin_key.unlink(missing_ok=True)
        return_to(prefix.root, previous, manifest.version, why, report)
        line = f"install: version {manifest.version} did not become ready ({why}); "
        line += f"returned to version {previous}"
        try:
            start_serving(prefix, unit_dir, timeout_s, report)
        except InstallerError as again:
            raise ReturnedError(f"{line}, which did not start either: {again.message}") from None
        raise ReturnedError(f"{line}, serving") from None


def rollback_serving(
    prefix_root: Path, unit_dir: Path, restore_data: bool, timeout_s: float, report: Report
) -> Started | None:
    """Roll back; a service that was running is stopped before the switch and serves the older version
    (or, when that does not become ready, the version it came from again: serve_rolled_back)."""
    prefix = Prefix(prefix_root.absolute())
    restart = Restart.find(prefix, unit_dir, report)
    came_from = prefix.current()
    try:
        target = rollback(prefix.root, report, restore_data=restore_data, quiesce=restart.quiesce)
    except InstallerError:
        restart.resume(timeout_s)
        raise
    if not restart.stopped or came_from is None:
        return None
    return serve_rolled_back(prefix, unit_dir, timeout_s, report, (target, came_from), restore_data)


def serve_rolled_back(
    prefix: Prefix,
    unit_dir: Path,
    timeout_s: float,
    report: Report,
    versions: tuple[int, int],
    restored: bool,
) -> Started:
    """Serve the older version a rollback made current; when it does not become ready, return to the
    version the rollback came from, its registry put back only if the rollback `restored` data or the older
    version migrated it, and serve that again: audited, one ReturnedError line (exit 61)."""
    target, came_from = versions
    revision = db_revision(prefix.registry_db())
    try:
        return start_serving(prefix, unit_dir, timeout_s, report)
    except InstallerError as error:
        if isinstance(error, NotReadyError):
            why = f"{error.reason}; see {error.log}"
        else:
            why = f"{error.message}; see {service_for(prefix, unit_dir).log}"
        changed = restored or db_revision(prefix.registry_db()) != revision
        return_to(prefix.root, came_from, target, why, report, action="rollback", restore=changed)
        line = f"rollback: version {target} did not become ready ({why}); returned to version {came_from}"
        try:
            start_serving(prefix, unit_dir, timeout_s, report)
        except InstallerError as again:
            raise ReturnedError(f"{line}, which did not start either: {again.message}") from None
        raise ReturnedError(f"{line}, serving") from None
