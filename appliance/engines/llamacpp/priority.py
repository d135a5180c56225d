"""Which threads get a core first on a CPU box: request handling before the decode's compute threads.

llama.cpp's threads keep every core busy while sequences run. The work that moves a request (the
gateway's and the worker's event loops: parsing, auth, relaying tokens) needs a few percent of one core,
but at normal priority each wake-up waits for a compute thread's time slice: at concurrency 8 on two cores
that was about 12 ms of every time to first token. Under SCHED_IDLE the compute threads take every cycle
nothing else wants and give way at once to any other thread that wakes.
"""

from __future__ import annotations

import os

from appliance.settings import ComputePriority


def apply_compute_priority(priority: ComputePriority) -> None:
    """Put the calling thread under SCHED_IDLE for "idle" (the threads it starts later inherit it: llama.cpp's
    OpenMP team of a decoding thread is made on its first decode); "normal" leaves it as it is.

    Any user may lower its own threads' policy; nothing ever raises it back."""
    if priority == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
