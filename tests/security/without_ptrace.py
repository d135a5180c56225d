"""`python -m tests.security.without_ptrace COMMAND...`: COMMAND without CAP_SYS_PTRACE, even as root.

The capability lets its holder read any process's descriptors and memory, dumpable or not, and the kernel
lets a process without it near one that has it (its permitted set must include the target's). So root has to
lose it on both sides for the dumpable flag to be what decides: the attacker and the worker run as a service
of the appliance's own unprivileged user would, where no process has it. Dropped from the bounding set, it
is gone from what the exec below (and every exec after it) permits; for anyone but root it is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_CAPBSET_DROP = 24
CAP_SYS_PTRACE = 19


def main(argv: list[str]) -> None:
    """Drop CAP_SYS_PTRACE from the bounding set if we may, then exec `argv`."""
    if os.geteuid() == 0:
        ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)
    os.execv(argv[0], argv)  # noqa: S606 - the test's own fixed command


if __name__ == "__main__":
    main(sys.argv[1:])
