"""A listening socket handed down by whoever holds it across restarts (systemd's socket activation protocol).

systemd (an `appliance.socket` unit) or the installer's holder process binds the gateway's address once and
starts `appliance serve` with the socket as fd 3, `LISTEN_FDS=1` and `LISTEN_PID` set to the server's pid
(sd_listen_fds(3)). The gateway then serves on that socket and never binds its own: when it drains on
SIGTERM it stops accepting, but the socket stays open in the holder, so connections that arrive while the
next version starts wait in the kernel's backlog instead of being refused.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from appliance.errors import SettingsError

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
BACKLOG = 4096
"""listen()'s backlog on an inherited socket. uvicorn listens again with its own (2048 by default), which
would shrink the holder's; the same generous value keeps room for every connection of a restart's gap (the
kernel caps it at net.core.somaxconn)."""


def inherited_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening TCP socket passed to this process as fd 3, or None when nothing was passed.

    The variables are removed (sd_listen_fds's unset_environment): the workers this process starts must not
    believe the socket is theirs, and fd 3 is made non-inheritable for the same reason."""
    env = os.environ if environ is None else environ
    count, pid = env.pop("LISTEN_FDS", None), env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    if count is None or pid != str(os.getpid()):
        return None  # not for us (a parent's variables that leaked down), or nothing passed
    if count != "1":
        raise SettingsError(f"LISTEN_FDS={count}: the gateway serves on exactly one inherited socket")
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)  # family and type come from the socket itself
    except OSError as error:
        raise SettingsError(f"LISTEN_FDS=1 but fd 3 is not a socket ({error.strerror})") from None
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (
        sock.type != socket.SOCK_STREAM
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or not accepting
    ):
        sock.detach()
        raise SettingsError("the inherited fd 3 is not a listening TCP socket")
    sock.set_inheritable(False)
    return sock


def bound_host(sock: socket.socket) -> str:
    """The address an inherited socket listens on (what the plain-HTTP check judges)."""
    host: str = sock.getsockname()[0]
    return host
