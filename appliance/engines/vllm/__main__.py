"""`python -m appliance.engines.vllm COMMAND...`: contain COMMAND (vLLM's server), then exec it.

vLLM cannot be asked to contain itself, so this wrapper does it first, in this order:

1. Non-dumpable (no core dumps; no ptrace or /proc/PID/mem by other processes of the user). The kernel makes
   an exec'd program dumpable again, so the worker's environment (launch.py) also puts `boot/` first on
   PYTHONPATH: its sitecustomize makes every Python process of the worker non-dumpable as the interpreter
   starts, before vLLM is imported: the server after this exec, and the engine-core and GPU-worker
   processes that it spawns, which hold the weights.
2. The parent-death signal (it survives exec): a vLLM worker is never orphaned by a gateway killed outright.
3. A private network namespace whose only interface is loopback, up (appliance/egress.py), where the OS
   allows one. The namespace and its loopback are inherited by every process vLLM starts.

Why loopback, and why that is all vLLM needs here: its processes meet over TCP on 127.0.0.1 even on one
GPU (torch.distributed's TCPStore, gloo's CPU groups, NCCL's bootstrap; its own messages go over unix
sockets). Tensor parallelism across the GPUs of one box moves tensors over NVLink or PCIe and shared
memory (NCCL's P2P and SHM transports, CUDA IPC), none of which is a network interface, so it works in this
namespace; the environment pins vLLM, gloo and NCCL to `lo` (launch.py). Multi-node vLLM (Ray; tensor or
pipeline parallelism across boxes) would need the real interfaces: Ray's GCS and object-manager ports and
NCCL's sockets or InfiniBand towards named peers. The appliance does not start it (no setting names peer
nodes, and the planner places a model on the GPUs of this box only), so every vLLM worker is single-node and
always gets the namespace; several boxes are joined by a gateway's chain instead (DESIGN.md).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from appliance.egress import enter_loopback_namespace

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


def main(argv: list[str]) -> None:
    """Make this process non-dumpable, tie it to its parent, enter the namespace; replace it with `argv`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if not argv:
        sys.exit("usage: python -m appliance.engines.vllm COMMAND [ARG...]")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before the request took effect
        sys.exit(1)
    problem = enter_loopback_namespace()
    if problem:  # as the llama.cpp worker: contained where the OS allows; the log says where it did not
        print(f"vllm-worker: {problem}; vLLM shares the host's network", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)  # noqa: S606 - argv is the supervisor's fixed vLLM command, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
