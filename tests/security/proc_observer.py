"""An attacker of the same user, without CAP_SYS_PTRACE: what it can see of processes whose argv holds MARKER.

`python -m tests.security.proc_observer MARKER` prints `ready`, then polls /proc until its stdin closes,
then prints one JSON line: every pid (but its own) it saw with MARKER in its argv, those whose descriptors
it could resolve at its last try (a same-user process without the capability can resolve and open them only
in a dumpable process), and the memfds it found among them at any time (plaintext it could have opened).

Start it under `tests.security.without_ptrace`: it reports whether it indeed runs without CAP_SYS_PTRACE.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys

CAP_SYS_PTRACE = 19


def _effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _argv_of(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def main(argv: list[str]) -> None:
    """Poll /proc for processes with the marker until stdin closes; print what could be seen."""
    marker = argv[0].encode()
    seen: set[int] = set()
    resolvable: dict[int, bool] = {}
    memfds: list[dict[str, object]] = []
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0.002)[0]:
        for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
            if pid == os.getpid() or marker not in _argv_of(pid):
                continue
            seen.add(pid)
            resolvable[pid] = False  # the last attempt counts: dumpable at first, then not
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")  # the check that opening it passes
                        resolvable[pid] = True
                        if target.startswith("/memfd:") and {"pid": pid, "target": target} not in memfds:
                            memfds.append({"pid": pid, "target": target})
    report = {
        "without_ptrace": not _effective_capabilities() >> CAP_SYS_PTRACE & 1,
        "seen": sorted(seen),
        "resolvable_at_last": sorted(pid for pid, can in resolvable.items() if can),
        "memfds": memfds,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
