"""`python -m appliance.engines.vllm COMMAND...`: have the kernel kill COMMAND with its supervisor; exec it.

vLLM cannot be asked to do this itself, and the setting survives exec, so a vLLM worker is never orphaned by a
gateway that was killed outright.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Set the parent-death signal, then replace this process with `argv`."""
    if not argv:
        sys.exit("usage: python -m appliance.engines.vllm COMMAND [ARG...]")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before the request took effect
        sys.exit(1)
    os.execv(argv[0], argv)  # noqa: S606 - argv is the supervisor's fixed vLLM command, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
