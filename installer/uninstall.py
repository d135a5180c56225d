"""`installer uninstall`: stop the service, remove the unit, every version, `current` and the state.

The data directory (keys, registry, store, snapshots) goes too only when the admin confirmed it: `--yes`, or
typing `yes` at a terminal; without a terminal and without `--yes` the uninstall is refused before anything
is stopped or removed. `--keep-data` leaves PREFIX/data as it is, so a later install with `--trust` serves
the same keys and models. A folder without an install state is not a prefix and is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from installer import service
from installer.errors import InstallStepError, StateError, UsageError
from installer.state import Prefix
from installer.steps import Report
from installer.systemd import SOCKET_NAME, UNIT_NAME

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMCTL = Path("/usr/bin/systemctl")
# Where a supervised background process (not systemd) may record its pid; state.json may name another.
PID_FILES = ("data/appliance.pid", "data/run/appliance.pid", "appliance.pid")
STOP_WAIT_S = 20.0
# The folders systemd reads units from: only a unit there is one that `systemctl` knows by its name (a unit
# written to another --unit-dir, as tests do, must not stop the host's appliance.service).
SYSTEM_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
DATA_WHAT = "keys, registry, store, snapshots"


@dataclass(frozen=True)
class UninstallOptions:
    """What the admin asked for."""

    prefix: Path
    keep_data: bool = False
    yes: bool = False
    unit_dir: Path = DEFAULT_UNIT_DIR


def systemd_running() -> bool:
    """Whether systemd is the init system (sd_booted(3): /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def systemd_manages(unit: Path) -> bool:
    """Whether systemd runs and loads units from the folder `unit` is in."""
    return systemd_running() and str(unit.parent) in SYSTEM_UNIT_DIRS


def unit_home(text: str) -> Path | None:
    """The data directory a unit serves (its `Environment=APPLIANCE_HOME=`)."""
    for line in text.splitlines():
        if line.startswith("Environment=APPLIANCE_HOME="):
            return Path(line.removeprefix("Environment=APPLIANCE_HOME="))
    return None


def our_unit(prefix: Prefix, unit_dir: Path) -> Path | None:
    """The unit file the installer wrote for this prefix, if there is one (a unit of another prefix is not
    ours: it names another data directory)."""
    path = unit_dir / UNIT_NAME
    try:
        home = unit_home(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    return path if home is not None and home.resolve() == prefix.data.resolve() else None


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemctl; a missing binary is a failure with a reason, not a traceback."""
    try:
        return subprocess.run(
            [str(SYSTEMCTL), *args], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InstallStepError(f"systemctl {' '.join(args)} failed: {error}") from None


def pid_files(prefix: Prefix) -> list[Path]:
    """The pid files a background process of this prefix may have left: the usual places, and the one the
    state names (`pid_file`, relative to the prefix or absolute), whichever exist."""
    names: list[str] = list(PID_FILES)
    with contextlib.suppress(OSError, ValueError):
        named = json.loads(prefix.state_file.read_text(encoding="utf-8")).get("pid_file")
        if isinstance(named, str) and named:
            names.append(named)
    found: list[Path] = []
    for name in names:
        path = prefix.root / name  # an absolute name replaces the prefix
        if path.is_file() and path not in found:
            found.append(path)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def stop_pid_file(prefix: Prefix, path: Path, report: Report) -> None:
    """Stop the process a pid file names, if it still runs and is this prefix's (its command line names the
    prefix: a stale pid reused by another process is left alone); SIGTERM, then SIGKILL."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        report(f"stop: {path} holds no pid; ignored")
        return
    if pid <= 1 or not _alive(pid):
        report(f"stop: process {pid} of {path} is not running")
        return
    command = _cmdline(pid)
    if str(prefix.root) not in command and str(prefix.root.resolve()) not in command:
        report(f"stop: process {pid} of {path} is not this appliance's; left alone")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        report(f"stop: process {pid} killed (it ignored SIGTERM for {STOP_WAIT_S:.0f}s)")
    else:
        report(f"stop: process {pid} stopped")


def confirm_data_removal(prefix: Prefix, yes: bool, ask: Callable[[str], str] = input) -> None:
    """Refuse, before anything changes, to remove the data without a confirmation."""
    if yes or not prefix.data.exists():
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"uninstall would remove {prefix.data} ({DATA_WHAT}) and there is no terminal to confirm: "
            "pass --yes, or --keep-data to keep it"
        )
    answer = ask(f"remove {prefix.data} ({DATA_WHAT}) for good? type 'yes' to confirm: ")
    if answer.strip() != "yes":
        raise UsageError("uninstall cancelled: nothing removed")


def _remove(path: Path, removed: list[str], report: Report) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    removed.append(str(path))
    report(f"removed: {path}")


def _stop(prefix: Prefix, unit_dir: Path, removed: list[str], report: Report) -> None:
    """Stop and disable the prefix's systemd unit and remove it; stop a process named by a pid file."""
    unit = our_unit(prefix, unit_dir)
    if unit is not None:
        managed = systemd_manages(unit)
        socket = unit.parent / SOCKET_NAME  # written beside it since the socket unit exists
        names = (SOCKET_NAME, UNIT_NAME) if socket.is_file() else (UNIT_NAME,)
        if managed:
            done = systemctl("disable", "--now", *names)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise InstallStepError(f"systemctl disable --now {' '.join(names)} failed: {last}")
            report(f"stop: {' and '.join(names)} stopped and disabled")
        else:
            report(f"stop: systemd does not run {unit}; nothing to stop")
        _remove(socket, removed, report)
        _remove(unit, removed, report)
        if managed:
            systemctl("daemon-reload")
    else:
        report(f"stop: no {UNIT_NAME} of this prefix in {unit_dir}")
    # The supervised background process `install --start` left (P/run/appliance.json: pid and start time).
    if service.stop(service.Service(prefix), report):
        report("stop: the supervised appliance stopped")
    for path in pid_files(prefix):
        stop_pid_file(prefix, path, report)
        _remove(path, removed, report)  # runtime, not data: stale once the process is gone


def uninstall(options: UninstallOptions, report: Report) -> list[str]:
    """Stop, then remove what the installer put in the prefix; report and return each path removed."""
    prefix = Prefix(options.prefix)
    if not prefix.exists():
        raise StateError(
            f"{prefix.root} is not an appliance prefix (no {prefix.state_file.name}); nothing removed"
        )
    prefix.load()  # a damaged state is refused here, before anything is stopped
    if not options.keep_data:
        confirm_data_removal(prefix, options.yes)
    removed: list[str] = []
    try:
        with prefix.locked():
            _stop(prefix, options.unit_dir, removed, report)
            if prefix.versions.is_dir():
                for version in sorted(prefix.versions.iterdir()):
                    _remove(version, removed, report)
            runtime = (prefix.versions, prefix.current_link, prefix.models, prefix.run)
            for path in (*runtime, *prefix.root.glob(".*.tmp")):
                _remove(path, removed, report)
            if not options.keep_data:
                _remove(prefix.data, removed, report)
            # The state goes last: an uninstall that fails half-way can be run again.
            _remove(prefix.state_file, removed, report)
            # Held, but nobody wants it once the state is gone.
            (prefix.root / ".lock").unlink(missing_ok=True)
    except OSError as error:  # a permission or a busy file: one line, like every other failure
        raise InstallStepError(f"uninstall failed: {error}") from None
    left = sorted(p.name for p in prefix.root.iterdir()) if prefix.root.is_dir() else []
    if options.keep_data and prefix.data.is_dir():
        report(f"kept: {prefix.data} ({DATA_WHAT}); a later install with --trust serves it again")
        left.remove(prefix.data.name)
    if left:
        report(f"left in place (not the installer's): {', '.join(left)} in {prefix.root}")
    elif not prefix.data.exists():
        prefix.root.rmdir()
        removed.append(str(prefix.root))
        report(f"removed: {prefix.root}")
    return removed
