"""Running the installed version: under systemd when systemd runs this host and the install wrote the unit,
else as a supervised background process that the installer starts, records and stops.

The supervised process runs exactly the unit's ExecStart (`PREFIX/current/venv/bin/appliance serve`), as
the service user when the data belongs to one, in a session of its own, with its output appended to
PREFIX/run/appliance.log. PREFIX/run/appliance.json records its pid and the pid's start time (so that a
recycled pid is never mistaken for it, nor signalled); PREFIX/run/ is root's, outside the data directory the
service can write, so the service cannot point the pid that root signals at another process.
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

from installer.admin_key import service_account
from installer.egress import offline_environment
from installer.errors import ServiceError
from installer.state import Prefix, atomic_write
from installer.steps import Report, as_user, clean_env, run_step
from installer.systemd import serve_argv

UNIT_NAME = "appliance.service"
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

    @property
    def log(self) -> str:
        """Where its output goes."""
        if self.systemctl is not None:
            return f"`journalctl -u {UNIT_NAME}`"
        return str(self.prefix.run / "appliance.log")

    @property
    def record(self) -> Path:
        """The supervised process's pid record."""
        return self.prefix.run / "appliance.json"


@dataclass(frozen=True)
class Running:
    """A serving process: its pid and the version whose code it runs (None: unknown)."""

    pid: int
    version: int | None


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
    return Service(prefix, systemctl if ours else None)


def _start_ticks(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot); None when there is no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold anything
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has exited: only its exit status is left
        return None
    return fields[19]


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
        if not main.isdigit() or int(main) == 0 or _start_ticks(int(main)) is None:
            return None
        return Running(int(main), _code_version(prefix, int(main)))
    try:
        record = json.loads(service.record.read_text(encoding="utf-8"))
        pid, ticks, version = int(record["pid"]), str(record["start"]), record["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 1 or _start_ticks(pid) != ticks:
        return None  # it exited (and its pid may belong to another process by now)
    found = _code_version(prefix, pid)
    return Running(pid, found if found is not None else version if isinstance(version, int) else None)


def _environment(prefix: Prefix, account: tuple[int, int] | None) -> dict[str, str]:
    """What the unit gives the service: a plain PATH, APPLIANCE_HOME, and nothing of the admin's shell."""
    env = {"PATH": PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), "APPLIANCE_HOME": str(prefix.data)}
    if account is None and "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return offline_environment(env)


def start(service: Service, report: Report) -> Ended:
    """Start serving the current version; returns a check that says why it ended, if it has."""
    if service.systemctl is not None:
        tool = service.systemctl
        _systemctl(tool, "daemon-reload")
        _systemctl(tool, "enable", "--now", UNIT_NAME)
        report(f"systemd: {UNIT_NAME} enabled and started")

        def failed() -> str | None:
            state = subprocess.run(
                [str(tool), "is-failed", UNIT_NAME], capture_output=True, text=True, check=False
            )
            return "failed under systemd" if state.stdout.strip() == "failed" else None

        return failed
    prefix, current = service.prefix, service.prefix.current()
    now = running(service)
    if now is not None and now.version == current:
        report(f"already running: version {current}, pid {now.pid}")
        return lambda: None
    if now is not None:
        report(f"version {now.version} is running, {current} is current: restarting")
        stop(service, report)
    prefix.run.mkdir(mode=0o700, exist_ok=True)
    log = prefix.run / "appliance.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    account = service_account(prefix)
    try:
        os.write(fd, f"--- installer: starting version {current} at {time.ctime()} ---\n".encode())
        process = subprocess.Popen(
            serve_argv(prefix.current_link),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=_environment(prefix, account),
            start_new_session=True,  # no terminal, and it outlives the installer
            umask=0o077,
            **{"cwd": "/", **as_user(account)},
        )
    except OSError as error:
        raise ServiceError(f"cannot start the appliance: {error}") from None
    finally:
        os.close(fd)
    record = {"pid": process.pid, "start": _start_ticks(process.pid), "version": current}
    atomic_write(service.record, json.dumps(record).encode(), mode=0o600)
    report(f"started version {current} in the background: pid {process.pid}, log {log}")

    def exited() -> str | None:
        code = process.poll()
        return None if code is None else f"exited with status {code}"

    return exited


def _wait_gone(pid: int, ticks: str | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _start_ticks(pid) == ticks and ticks is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop(service: Service, report: Report, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop serving (SIGTERM, then SIGKILL to its session after `timeout_s`); False if it was not running."""
    if service.systemctl is not None:
        was = running(service) is not None
        _systemctl(service.systemctl, "stop", UNIT_NAME)
        return was
    now = running(service)
    if now is None:
        service.record.unlink(missing_ok=True)  # a record of a process that has exited
        return False
    ticks = _start_ticks(now.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(now.pid, signal.SIGTERM)  # the gateway drains, then stops its workers
    if not _wait_gone(now.pid, ticks, timeout_s):
        report(f"pid {now.pid} did not stop within {timeout_s:.0f}s: killing its session")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(now.pid, signal.SIGKILL)  # its own session (start_new_session): workers too
        if not _wait_gone(now.pid, ticks, KILL_WAIT_S):
            raise ServiceError(f"pid {now.pid} survived SIGKILL; see {service.log}")
    service.record.unlink(missing_ok=True)
    return True
