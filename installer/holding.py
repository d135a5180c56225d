"""The installer's side of the supervised socket holder (installer/holder.py): launch it, read what its
child is doing, and give it orders (restart the child, pause it, stop everything).

PREFIX/run/appliance.json names the holder (pid, start time, the address it holds); PREFIX/run/child.json,
which the holder writes, names its child. Both pids are believed only while their start time matches
/proc, and a child only while its holder is the one recorded, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from installer.errors import ServiceError
from installer.state import Prefix, atomic_write
from installer.systemd import serve_argv

HOLDER_FILE = "holder.py"
CHILD_FILE = "child.json"
POLL_S = 0.1


def start_ticks(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot); None when there is no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold anything
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has exited: only its exit status is left
        return None
    return fields[19]


def wait_gone(pid: int, ticks: str | None, timeout_s: float) -> bool:
    """Wait until the process (pid, start time) is gone; False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while ticks is not None and start_ticks(pid) == ticks:
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


@dataclass(frozen=True)
class Child:
    """What the holder says of its child: the generation (one per start), the pid if one runs, its end."""

    generation: int
    pid: int | None
    exit: int | None


def child_of(prefix: Prefix, holder: int) -> Child:
    """The holder's child as its status file says, a pid kept only while that process still runs."""
    try:
        status = json.loads((prefix.run / CHILD_FILE).read_text(encoding="utf-8"))
        if int(status["holder"]) != holder:
            return Child(0, None, None)  # another (earlier) holder's file
        generation, pid = int(status["generation"]), status["pid"]
        code = status["exit"] if isinstance(status["exit"], int) else None
    except (OSError, ValueError, KeyError, TypeError):
        return Child(0, None, None)
    alive = isinstance(pid, int) and pid > 1 and start_ticks(pid) == str(status["start"])
    return Child(generation, pid if alive else None, code)


def launch(
    prefix: Prefix, listen: tuple[str, int], env: dict[str, str], account: tuple[int, int] | None, log: int
) -> subprocess.Popen[bytes]:
    """Start a holder on `listen` that serves the current version; its output goes to the `log` fd."""
    # A copy in run/ (root's): the holder then needs nothing of wherever this installer runs from.
    source = importlib.resources.files("installer").joinpath(HOLDER_FILE).read_bytes()
    script = prefix.run / HOLDER_FILE
    atomic_write(script, source, mode=0o600)
    (prefix.run / CHILD_FILE).unlink(missing_ok=True)
    host, port = listen
    argv = [sys.executable, "-I", str(script), "--host", host, "--port", str(port)]
    argv += ["--status", str(prefix.run / CHILD_FILE)]
    if account is not None:
        argv += ["--user", f"{account[0]}:{account[1]}"]
    argv += ["--", *serve_argv(prefix.current_link)]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,  # no terminal, and it outlives the installer
        cwd="/",
        umask=0o077,
    )


def order(holder: int, ticks: str, signum: int) -> None:
    """Signal the holder, if it is still the process that was recorded."""
    if start_ticks(holder) != ticks:
        raise ServiceError(f"the appliance's holder (pid {holder}) has exited")
    os.kill(holder, signum)


def restart_child(prefix: Prefix, holder: int, ticks: str, timeout_s: float) -> int:
    """Have the holder stop its child (it drains) and start one from `current`; the new generation."""
    before = child_of(prefix, holder).generation
    order(holder, ticks, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while (now := child_of(prefix, holder)).generation <= before:
        if start_ticks(holder) != ticks:
            raise ServiceError(f"the appliance's holder (pid {holder}) exited while restarting it")
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"the appliance's holder (pid {holder}) did not restart it in {timeout_s:.0f}s"
            )
        time.sleep(POLL_S)
    return now.generation


def pause_child(prefix: Prefix, holder: int, ticks: str, timeout_s: float) -> bool:
    """Have the holder stop its child and keep the socket until the next order (even when no child runs:
    one that exited on its own would otherwise close it after a while); False when no child ran."""
    child = child_of(prefix, holder)
    child_ticks = start_ticks(child.pid) if child.pid is not None else None
    order(holder, ticks, signal.SIGUSR1)
    if child.pid is None:
        return False
    if not wait_gone(child.pid, child_ticks, timeout_s):
        raise ServiceError(f"pid {child.pid} did not stop within {timeout_s:.0f}s")
    return True


def stop_holder(prefix: Prefix, holder: int, ticks: str, timeout_s: float) -> bool:
    """SIGTERM the holder (its child drains, then it closes the socket); SIGKILL both sessions after
    `timeout_s`. False when it could not be stopped."""
    child = child_of(prefix, holder)
    with contextlib.suppress(ServiceError, ProcessLookupError):  # already gone: nothing to stop
        order(holder, ticks, signal.SIGTERM)
    if wait_gone(holder, ticks, timeout_s):
        return True
    for session in (child.pid, holder):
        if session is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, signal.SIGKILL)
    return wait_gone(holder, ticks, 10.0)
