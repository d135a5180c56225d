"""Whether the worker can lock decrypted weights in RAM, so that the kernel never swaps their pages out.

A memfd's pages are shared memory, which the kernel swaps like any other page; a swap partition that is not
encrypted would then hold plaintext weights on a disk. llama.cpp's LLAMA_LOAD_MODE_MMAP_MLOCK locks the
model's mapping (and any weights it copies into buffers of its own). Locking needs CAP_IPC_LOCK or an
RLIMIT_MEMLOCK of at least the model's size; where neither is there, the model still loads, unlocked, and
the worker says so once on stderr (the gateway's log): swap must then be off or encrypted.
"""

from __future__ import annotations

import resource
from pathlib import Path

CAP_IPC_LOCK = 14


def _has_capability(bit: int, status: Path = Path("/proc/self/status")) -> bool:
    for line in status.read_text(encoding="ascii").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def memory_lock_problem(size_bytes: int) -> str:
    """'' when `size_bytes` can be locked in RAM here (the soft limit raised to the hard one if that is
    what it takes), else why not, as the end of a sentence."""
    if _has_capability(CAP_IPC_LOCK):
        return ""  # the limit does not apply (root, or a unit that grants the capability)
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= size_bytes:
        return ""
    if hard == resource.RLIM_INFINITY or hard >= size_bytes:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        return ""
    return f"RLIMIT_MEMLOCK allows {hard} bytes (LimitMEMLOCK= in the unit, `ulimit -l`)"


def unlocked_warning(name: str, size_bytes: int, problem: str) -> str:
    """The one line a worker writes when it serves decrypted weights it could not lock."""
    return (
        f"llamacpp-worker: cannot lock the decrypted weights of {name} ({size_bytes >> 20} MiB) in memory: "
        f"{problem}; they may be swapped out, so swap must be off or encrypted"
    )
