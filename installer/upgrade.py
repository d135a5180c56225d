"""Upgrades and rollbacks of a serving prefix: stop it (the gateway drains) before the data or `current`
changes, start the new current version after and wait for it to be ready; an upgrade whose version does not
become ready returns to the previous version (data as it left it) and serves that again, audited."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from installer.crypto import Verifier
from installer.data import db_revision
from installer.errors import InstallerError, NotReadyError, ReturnedError
from installer.install import Options, install, return_to, rollback
from installer.manifest import Manifest
from installer.service import Running, pause, running, service_for, stop
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
        """Stop it (SIGTERM: in-flight requests drain) before the data or `current` changes; its socket
        stays open, so connections wait for the next version instead of being refused."""
        if self.was is None or self.stopped:
            return
        self.report(f"stopping version {self.was.version} (pid {self.was.pid}) before the switch: it drains")
        pause(service_for(self.prefix, self.unit_dir), self.report)
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
    can_return = previous is not None and previous != manifest.version
    try:
        # A version that does not come up leaves the socket open for the return to the previous one.
        keep = restart.stopped and can_return
        return manifest, start_serving(prefix, unit_dir, timeout_s, report, keep_socket=keep)
    except InstallerError as error:
        if previous is None or not can_return:
            raise
        if not had_key:  # made in the registry that the return puts back: the previous version makes its own
            prefix.admin_key.unlink(missing_ok=True)
        _return_and_serve(prefix, unit_dir, timeout_s, report, error, (manifest.version, previous), "install")


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
    """Serve the older version a rollback made current (`versions`: it, and the one the rollback came
    from); when it does not become ready, return to the version the rollback came from, its registry put
    back only if the rollback `restored` data or the older version migrated it, and serve that again:
    audited, one ReturnedError line (exit 61)."""
    revision = db_revision(prefix.registry_db())
    try:
        return start_serving(prefix, unit_dir, timeout_s, report, keep_socket=True)
    except InstallerError as error:
        changed = restored or db_revision(prefix.registry_db()) != revision
        _return_and_serve(prefix, unit_dir, timeout_s, report, error, versions, "rollback", changed)


def _return_and_serve(
    prefix: Prefix,
    unit_dir: Path,
    timeout_s: float,
    report: Report,
    error: InstallerError,
    versions: tuple[int, int],
    action: str,
    restore: bool | None = None,
) -> NoReturn:
    """`failed` (of `versions`: failed, previous) did not become ready: make `previous` current again,
    with the registry as `restore` says (install.return_to), serve it on the socket that stayed open, and
    end with one ReturnedError line (exit 61)."""
    failed, previous = versions
    service = service_for(prefix, unit_dir)
    if isinstance(error, NotReadyError):
        why = f"{error.reason}; see {error.log}"
    else:
        why = f"{error.message}; see {service.log}"

    def quiesce() -> None:
        # Again, under the prefix's lock: under systemd a connection could have started it meanwhile.
        pause(service, report)

    try:
        return_to(prefix.root, previous, failed, why, report, action=action, restore=restore, quiesce=quiesce)
    except InstallerError:
        stop(service, report)  # no return: the socket the appliance kept closes with it
        raise
    line = f"{action}: version {failed} did not become ready ({why}); returned to version {previous}"
    try:
        start_serving(prefix, unit_dir, timeout_s, report)
    except InstallerError as again:
        raise ReturnedError(f"{line}, which did not start either: {again.message}") from None
    raise ReturnedError(f"{line}, serving") from None
