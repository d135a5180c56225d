"""`install --start`, `start` and `stop`: the admin key, the service, readiness, and what to paste next."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installer.admin_key import ensure_admin_key, read_admin_key
from installer.errors import InstallerError, ServiceError, StateError
from installer.ready import Endpoint, default_model, probe, read_endpoint, wait_ready
from installer.service import Service, pause, running, service_for, start, stop
from installer.state import Prefix
from installer.steps import Report


@dataclass(frozen=True)
class Started:
    """What a start leaves for the admin: where it serves, the key file, the key if new, a model to ask."""

    endpoint: Endpoint
    key_file: Path
    new_key: str | None
    model: str
    state: str  # "ready", "locked" (the store waits for an admin), or "started" (not asked from here)


def start_serving(
    prefix: Prefix, unit_dir: Path, timeout_s: float, report: Report, keep_socket: bool = False
) -> Started:
    """Make sure the admin key exists, start the current version, wait until it is ready.

    A service that ends or stays unready past `timeout_s` is stopped again (only the appliance with
    `keep_socket`: an upgrade returns to the previous version on the same socket) and is a ServiceError
    naming its log; the installed files stay as they are."""
    if prefix.current() is None:
        raise StateError(f"nothing is installed in {prefix.root}")
    with prefix.locked():
        key_file, new_key = ensure_admin_key(prefix)
        report(f"admin key: {'created' if new_key else 'kept'} {key_file}")
        endpoint = read_endpoint(prefix)  # before starting: a broken settings file is one line, not a wait
        service = service_for(prefix, unit_dir)
        ended = start(service, report, (endpoint.host, endpoint.port))
        key, state = new_key or read_admin_key(prefix), "started"
        if not endpoint.checkable or key is None:
            report(f"readiness not checked: the installer asks over loopback only ({endpoint.url})")
        else:
            try:
                state = wait_ready(endpoint, key, timeout_s, ended, service.log, report)
            except ServiceError:
                _stop_quietly(service, report, keep_socket)
                raise
    return Started(endpoint, key_file, new_key, default_model(prefix), state)


def _stop_quietly(service: Service, report: Report, keep_socket: bool) -> None:
    """Stop a service that failed to come up; a failure to stop it is reported, not raised over the cause."""
    try:
        if keep_socket:
            pause(service, report)
        else:
            stop(service, report)
    except InstallerError as error:
        report(f"could not stop it: {error.message}")


def stop_serving(prefix: Prefix, unit_dir: Path, report: Report) -> bool:
    """Stop the service of this prefix; False when it was not running."""
    with prefix.locked():
        return stop(service_for(prefix, unit_dir), report)


def service_summary(prefix: Prefix, unit_dir: Path) -> dict[str, Any]:
    """The service as `status` shows it: mode, running or stopped, pid, version, health, URL."""
    service = service_for(prefix, unit_dir)
    summary: dict[str, Any] = {"mode": "systemd" if service.systemctl is not None else "supervised"}
    now = running(service) if prefix.current() is not None else None
    if now is None:
        return {**summary, "state": "stopped", "health": "stopped"}
    summary |= {"state": "running", "pid": now.pid, "version": now.version}
    if not now.serving:
        return {**summary, "health": "holding its socket, no version serves (`start` serves current)"}
    try:
        endpoint = read_endpoint(prefix)
    except InstallerError as error:
        return {**summary, "health": f"unknown ({error.message})"}
    key = read_admin_key(prefix)
    if key is None:
        health = f"unknown (no admin key in {prefix.admin_key})"
    elif not endpoint.checkable:
        health = "unknown (the installer asks over loopback only)"
    else:
        answer = probe(endpoint, key)
        health = "ready" if answer.code == 200 else f"not ready ({answer.detail})"
    return {**summary, "health": health, "url": endpoint.url}
