"""The supervised appliance's socket holder: it binds the gateway's address once and runs `appliance serve`
as its child on that socket, so that a restart (an upgrade, a rollback) never closes the port.

The child gets the socket the way systemd's socket activation hands it down (sd_listen_fds(3)): fd 3,
LISTEN_FDS=1, LISTEN_PID its own pid. When the child drains on SIGTERM it stops accepting, but the socket
stays open here: connections that arrive before the next child accepts wait in the kernel's backlog.

The installer starts it as `python3 -I PREFIX/run/holder.py ...` from a copy of this file (stdlib only: it
needs nothing of the installer that started it, which may have run from a USB stick), in a session of its
own, and gives it orders with signals:
  SIGHUP   stop the child (SIGTERM: it drains; SIGKILL to its session after --stop-timeout), then start a
           new one, from PREFIX/current as it is now
  SIGUSR1  stop the child and hold the socket with none (an upgrade's data step runs meanwhile)
  SIGTERM  stop the child, close the socket, exit 0
After every change it writes --status (JSON: holder, generation, pid, start, exit): the child's pid and
start time (so a recycled pid is never taken for it) and how it ended. A child that exits on its own (a
crash, a version that cannot start) is recorded; the holder then waits --linger seconds for an order (the
installer watching a restart returns to the previous version without closing the port), else it exits
with the child's status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

LISTEN_FD = 3  # SD_LISTEN_FDS_START
BACKLOG = 4096  # room for every connection of a restart's gap (the kernel caps it at net.core.somaxconn)
TICK_S = 0.2
# sh sets LISTEN_PID to its own pid ($$), which `exec` keeps: the pid is only known after the fork.
TRAMPOLINE = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


def say(line: str) -> None:
    """One line to the log (stderr: the installer appends it to PREFIX/run/appliance.log)."""
    print(f"holder[{os.getpid()}]: {line}", file=sys.stderr, flush=True)


def start_ticks(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), as the installer reads it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stream:
            stat = stream.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) >= 20 else None


def listen(host: str, port: int) -> None:
    """Bind and listen on (host, port) as fd 3, where the child will find it."""
    # The address the settings name ("": every address, as the gateway binds it); the wall is the unit's.
    everywhere = "0.0.0.0"  # noqa: S104
    family, kind, proto, _, address = socket.getaddrinfo(
        host or everywhere, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as uvicorn (asyncio) binds it
    sock.bind(address)
    sock.listen(BACKLOG)
    fd = sock.detach()
    if fd != LISTEN_FD:
        try:
            os.fstat(LISTEN_FD)
        except OSError:
            os.dup2(fd, LISTEN_FD, inheritable=False)
            os.close(fd)
        else:
            raise OSError(f"fd {LISTEN_FD} is taken; the child could not find its socket there")
    say(f"listening on {host}:{port} (backlog {BACKLOG})")


class Holder:
    """The child, its generation and how the last one ended; the status file after each change."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.child: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exit: int | None = None
        self.orders: list[int] = []

    def write_status(self) -> None:
        """The status file, replaced in one step (the installer reads it at any moment)."""
        child = self.child
        status = {
            "holder": os.getpid(),
            "generation": self.generation,
            "pid": child.pid if child is not None else None,
            "start": start_ticks(child.pid) if child is not None else None,
            "exit": self.exit,
        }
        path = self.options.status
        temp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(status))
        os.replace(temp, path)

    def spawn(self) -> bool:
        """Start a child on the socket: the serve command, as the service user when there is one."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env["LISTEN_FDS"] = "1"
        account: dict[str, Any] = {}
        if self.options.user is not None:
            uid, gid = self.options.user
            account = {"user": uid, "group": gid, "extra_groups": []}
        self.generation += 1
        self.exit = None
        try:
            self.child = subprocess.Popen(
                ["/bin/sh", "-c", TRAMPOLINE, "appliance", *self.options.argv],
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(LISTEN_FD,),
                start_new_session=True,  # its workers go with it when its session is killed
                cwd="/",
                umask=0o077,
                **account,
            )
        except OSError as error:
            say(f"cannot start the appliance: {error}")
            self.child, self.exit = None, 127
        else:
            say(f"started pid {self.child.pid} (generation {self.generation})")
        self.write_status()
        return self.child is not None

    def stop_child(self) -> None:
        """SIGTERM the child (the gateway drains), SIGKILL its session if it outlives --stop-timeout."""
        child = self.child
        if child is None:
            return
        say(f"stopping pid {child.pid}: it drains")
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(self.options.stop_timeout)
        except subprocess.TimeoutExpired:
            say(f"pid {child.pid} did not stop within {self.options.stop_timeout:.0f}s: killing its session")
            os.killpg(child.pid, signal.SIGKILL)
            code = child.wait()
        say(f"pid {child.pid} stopped (status {code})")
        self.child, self.exit = None, code
        self.write_status()

    def run(self) -> int:
        """Serve orders until SIGTERM, or until a child that exited on its own gets no order in time."""
        # Since when no child runs although none was ordered to stop (it exited, or could not start).
        alone_since = None if self.spawn() else time.monotonic()
        while True:
            while self.orders:
                order = self.orders.pop(0)
                self.stop_child()
                alone_since = None
                if order in (signal.SIGTERM, signal.SIGINT):
                    os.close(LISTEN_FD)
                    say("stopped")
                    return 0
                if order == signal.SIGHUP:
                    alone_since = None if self.spawn() else time.monotonic()
                else:
                    say("holding the socket with no appliance (paused)")
            if self.child is not None and (code := self.child.poll()) is not None:
                say(f"pid {self.child.pid} exited on its own (status {code})")
                self.child, self.exit = None, code
                self.write_status()
                alone_since = time.monotonic()
            if alone_since is not None and time.monotonic() - alone_since > self.options.linger:
                say(f"no order within {self.options.linger:.0f}s: closing the socket")
                code = self.exit if self.exit is not None else 1
                return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
            time.sleep(TICK_S)


def _account(text: str) -> tuple[int, int]:
    uid, gid = text.split(":")
    return int(uid), int(gid)


def main(argv: list[str]) -> int:
    """`holder.py --host H --port P --status FILE [--user UID:GID] -- SERVE_ARGV...`."""
    parser = argparse.ArgumentParser(prog="holder.py")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--user", type=_account)
    parser.add_argument("--stop-timeout", type=float, default=90.0)
    parser.add_argument("--linger", type=float, default=60.0)
    parser.add_argument("argv", nargs="+")
    options = parser.parse_args(argv)
    holder = Holder(options)
    # Orders are queued from the start: SIGHUP's default action would end the holder.
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: holder.orders.append(number))
    try:
        listen(options.host, options.port)
    except OSError as error:
        say(f"cannot listen on {options.host}:{options.port}: {error}")
        return 1
    return holder.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
