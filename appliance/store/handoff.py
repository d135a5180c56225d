"""Handing a worker its decrypted model only once the worker is non-dumpable.

A descriptor inherited at exec is held from the worker's first instruction, long before its own code can
forbid core dumps and ptrace: for that window any process of the same user could open `/proc/PID/fd/N` and
read the plaintext. So the worker inherits no memfd. The gateway queues the memfd in a unix socket pair
(SCM_RIGHTS) before the worker exists and the worker inherits only the other end; while a message is queued,
no process's descriptor table holds the memfd. The worker makes itself non-dumpable, then receives it and
puts it on the socket's descriptor number, so the `/proc/self/fd/N` on its command line names the model from
then on. A socket's `/proc/PID/fd` link cannot be opened; taking the socket itself needs `pidfd_getfd`,
which is ptrace-attach (and Yama's default scope forbids that to any process but the worker's ancestors).
"""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

from appliance.errors import ModelFileError

_DESCRIPTOR_PATH = re.compile(r"/proc/self/fd/(\d+)")
_MESSAGE = b"m"


def queue_descriptor(fd: int) -> int:
    """A new socket descriptor (to pass to the worker) with `fd` queued in it; the caller closes `fd`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        socket.send_fds(ours, [_MESSAGE], [fd])
    # Closing our end leaves the message readable at theirs; closing theirs too discards it, memfd and all.
    return theirs.detach()


def receive_handed_model(path: Path) -> bool:
    """If `path` is `/proc/self/fd/N` and N a socket: take the queued model onto N (True). Else False.

    Call only once this process is non-dumpable (`make_non_dumpable`): from here on it holds plaintext.
    """
    match = _DESCRIPTOR_PATH.fullmatch(str(path))
    if match is None:
        return False
    number = int(match.group(1))
    try:
        if not stat.S_ISSOCK(os.fstat(number).st_mode):
            return False  # a descriptor that is the model itself (a caller outside the supervisor)
    except OSError:
        return False  # no such descriptor: loading the path fails with the usual one-line error
    carrier = socket.socket(fileno=number)
    try:
        message, fds, _flags, _address = socket.recv_fds(carrier, len(_MESSAGE), 1)
    finally:
        carrier.detach()  # the number is about to be the model's; the socket object must not close it
    if message != _MESSAGE or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ModelFileError(f"{path}: the supervisor handed over no model")
    os.dup2(fds[0], number, inheritable=False)  # closes the socket, the last holder of its end
    os.close(fds[0])
    return True
