"""Running the installed version: under systemd when systemd runs this host and the install wrote the units,
else as a supervised background process that the installer starts, records and stops.

Either way the listening socket outlives a restart. systemd holds it in `appliance.socket`; supervised, a
small holder process (installer/holder.py) binds it once and runs exactly the unit's ExecStart
(`PREFIX/current/venv/bin/appliance serve`) as its child on it, as the service user when the data belongs
to one, in a session of its own, with all output appended to PREFIX/run/appliance.log. An upgrade or a
rollback stops only the appliance (it drains) and starts the next one on the same socket, so connections
in between wait in the kernel's backlog instead of being refused. PREFIX/run/appliance.json records the
holder's pid and the pid's start time (so that a recycled pid is never mistaken for it, nor signalled);
PREFIX/run/ is root's, outside the data directory the service can write, so the service cannot point the
pid that root signals at another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installer.admin_key import service_account
from installer.egress import offline_environment
from installer.errors import ServiceError
from installer.holding import (
    CHILD_FILE,
    HOLDER_FILE,
    child_of,
    launch,
    pause_child,
    restart_child,
    start_ticks,
    stop_holder,
    wait_gone,
)
from installer.state import Prefix, atomic_write
from installer.steps import Report, clean_env, run_step
from installer.systemd import SOCKET_NAME, UNIT_NAME, serve_argv

SYSTEMD_RUNS = Path("/run/systemd/system")  # exists when systemd is PID 1 (sd_booted)
SYSTEMCTL = (Path("/usr/bin/systemctl"), Path("/bin/systemctl"))
STOP_TIMEOUT_S = 90.0  # the gateway drains for [server] drain_timeout_s (30 s), then stops its workers
KILL_WAIT_S = 10.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Ended = Callable[[], str | None]


@dataclass(frozen=True)
class Service:
    """How this prefix is served: through `systemctl` (its unit file) or supervised (`systemctl` None)."""

    prefix: Prefix
    systemctl: Path | None = None
    units: tuple[str, ...] = (UNIT_NAME,)  # under systemd: the socket unit too, when the install wrote it

    @property
    def log(self) -> str:
        """Where its output goes."""
        if self.systemctl is not None:
            return f"`journalctl -u {UNIT_NAME}`"
        return str(self.prefix.run / "appliance.log")

    @property
    def record(self) -> Path:
        """The supervised holder's pid record."""
        return self.prefix.run / "appliance.json"

    def recorded(self) -> dict[str, Any] | None:
        """The record, while the process it names still runs (pid and start time match)."""
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            pid, ticks = int(record["pid"]), str(record["start"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(record, dict) or pid <= 1 or start_ticks(pid) != ticks:
            return None  # it exited (and its pid may belong to another process by now)
        return record


@dataclass(frozen=True)
class Running:
    """A serving process: its pid and the version whose code it runs (None: unknown).

    Supervised, `pid` is the socket holder's and `version` its child's; `serving` is False while the holder
    keeps the socket with no appliance (an upgrade's data step, or a child that exited)."""

    pid: int
    version: int | None
    serving: bool = True


def service_for(prefix: Prefix, unit_dir: Path) -> Service:
    """Systemd's when it runs this host and `unit_dir` holds the unit this prefix's install wrote."""
    systemctl = next((tool for tool in SYSTEMCTL if tool.is_file()), None)
    if systemctl is None or not SYSTEMD_RUNS.is_dir():
        return Service(prefix)
    try:
        unit = (unit_dir / UNIT_NAME).read_text(encoding="utf-8")
    except OSError:
        return Service(prefix)
    # Another prefix's unit is not ours to start or stop.
    ours = f"ExecStart={' '.join(serve_argv(prefix.current_link))}\n" in unit
    if not ours:
        return Service(prefix)
    # An install from before the socket unit wrote the service alone (the next install adds the socket).
    socket = (unit_dir / SOCKET_NAME).is_file()
    return Service(prefix, systemctl, (SOCKET_NAME, UNIT_NAME) if socket else (UNIT_NAME,))


def _code_version(prefix: Prefix, pid: int) -> int | None:
    """The version whose venv `pid` runs, from its command line (the script's interpreter is that venv's)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    versions = f"{prefix.versions}/"
    for arg in argv:
        text = arg.decode("utf-8", "replace")
        if text.startswith(versions) and (number := text[len(versions) :].split("/", 1)[0]).isdigit():
            return int(number)
    return None


def _systemctl(tool: Path, *args: str) -> str:
    return run_step(f"systemctl {args[0]}", [str(tool), *args], clean_env())


def running(service: Service) -> Running | None:
    """The process serving this prefix now, or None when it is stopped."""
    prefix = service.prefix
    if service.systemctl is not None:
        main = _systemctl(service.systemctl, "show", "--property", "MainPID", "--value", UNIT_NAME).strip()
        if not main.isdigit() or int(main) == 0 or start_ticks(int(main)) is None:
            return None
        return Running(int(main), _code_version(prefix, int(main)))
    record = service.recorded()
    if record is None:
        return None
    pid, version = int(record["pid"]), record.get("version")
    if not record.get("holder"):  # recorded by an installer from before the holder: the pid serves itself
        found = _code_version(prefix, pid)
        return Running(pid, found if found is not None else version if isinstance(version, int) else None)
    child = child_of(prefix, pid)
    if child.pid is None:
        return Running(pid, None, serving=False)
    return Running(pid, _code_version(prefix, child.pid))


def _environment(prefix: Prefix, account: tuple[int, int] | None) -> dict[str, str]:
    """What the unit gives the service: a plain PATH, APPLIANCE_HOME, and nothing of the admin's shell."""
    env = {"PATH": PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), "APPLIANCE_HOME": str(prefix.data)}
    if account is None and "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return offline_environment(env)


def _child_ended(prefix: Prefix, holder: int, ticks: str, generation: int) -> str | None:
    """Why the holder's child of `generation` is gone, if it is (the holder itself gone included)."""
    if start_ticks(holder) != ticks:
        return "exited (and its socket holder with it)"
    child = child_of(prefix, holder)
    if child.generation == generation and child.pid is None and child.exit is not None:
        return f"exited with status {child.exit}"
    return None


def _start_systemd(tool: Path, units: tuple[str, ...], report: Report) -> Ended:
    _systemctl(tool, "daemon-reload")
    _systemctl(tool, "enable", "--now", *units)
    report(f"systemd: {' and '.join(units)} enabled and started")

    def failed() -> str | None:
        state = subprocess.run(
            [str(tool), "is-failed", UNIT_NAME], capture_output=True, text=True, check=False
        )
        return "failed under systemd" if state.stdout.strip() == "failed" else None

    return failed


def start(service: Service, report: Report, listen: tuple[str, int]) -> Ended:
    """Serve the current version on `listen` (host, port); returns a check that says why it ended, if it has.

    A holder already keeping that address restarts its child there (the socket stays open); otherwise a
    new holder binds it."""
    if service.systemctl is not None:
        return _start_systemd(service.systemctl, service.units, report)
    prefix, current = service.prefix, service.prefix.current()
    record, now = service.recorded(), running(service)
    if (
        record is not None
        and now is not None
        and record.get("holder")
        and record.get("listen") == list(listen)
    ):
        if now.serving and now.version == current:
            report(f"already running: version {current}, pid {now.pid}")
            return lambda: None
        what = f"version {now.version} is running" if now.serving else "no version is running"
        report(f"{what}, {current} is current: starting it on the socket that pid {now.pid} holds")
        holder, ticks = now.pid, str(record["start"])
        generation = restart_child(prefix, holder, ticks, STOP_TIMEOUT_S + KILL_WAIT_S)
        return lambda: _child_ended(prefix, holder, ticks, generation)
    if now is not None:
        report(f"version {now.version} is running, {current} is current: restarting")
        stop(service, report)
    prefix.run.mkdir(mode=0o700, exist_ok=True)
    log = prefix.run / "appliance.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    account = service_account(prefix)
    try:
        os.write(fd, f"--- installer: starting version {current} at {time.ctime()} ---\n".encode())
        process = launch(prefix, listen, _environment(prefix, account), account, fd)
    except OSError as error:
        raise ServiceError(f"cannot start the appliance: {error}") from None
    finally:
        os.close(fd)
    started = str(start_ticks(process.pid))
    record = {
        "pid": process.pid,
        "start": started,
        "version": current,
        "holder": True,
        "listen": list(listen),
    }
    atomic_write(service.record, json.dumps(record).encode(), mode=0o600)
    report(f"started version {current} in the background: pid {process.pid}, log {log}")

    def exited() -> str | None:
        code = process.poll()
        if code is not None:
            return f"exited with status {code}"
        return _child_ended(prefix, process.pid, started, 1)

    return exited


def pause(service: Service, report: Report) -> bool:
    """Stop the appliance but keep its socket open (systemd's socket unit, or the holder); False if it was
    not running. Connections that arrive meanwhile wait for the next `start`."""
    if service.systemctl is not None:
        was = running(service) is not None
        _systemctl(service.systemctl, "stop", UNIT_NAME)
        return was
    record, now = service.recorded(), running(service)
    if record is None or now is None:
        return False
    if not record.get("holder"):
        return stop(service, report)  # an appliance from before the holder keeps no socket: stop it
    pause_child(service.prefix, now.pid, str(record["start"]), STOP_TIMEOUT_S + KILL_WAIT_S)
    return True


def stop(service: Service, report: Report, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop serving and close the socket (SIGTERM, then SIGKILL to its session after `timeout_s`); False if
    it was not running."""
    if service.systemctl is not None:
        was = running(service) is not None
        _systemctl(service.systemctl, "stop", *service.units)
        return was
    record = service.recorded()
    if record is None:
        _forget(service)  # a record of a process that has exited
        return False
    pid, ticks = int(record["pid"]), str(record["start"])
    if record.get("holder"):
        if not stop_holder(service.prefix, pid, ticks, timeout_s + KILL_WAIT_S):
            raise ServiceError(f"pid {pid} survived SIGKILL; see {service.log}")
        _forget(service)
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # the gateway drains, then stops its workers
    if not wait_gone(pid, ticks, timeout_s):
        report(f"pid {pid} did not stop within {timeout_s:.0f}s: killing its session")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # its own session (start_new_session): workers too
        if not wait_gone(pid, ticks, KILL_WAIT_S):
            raise ServiceError(f"pid {pid} survived SIGKILL; see {service.log}")
    _forget(service)
    return True


def _forget(service: Service) -> None:
    for name in (service.record.name, CHILD_FILE, HOLDER_FILE):
        (service.prefix.run / name).unlink(missing_ok=True)
