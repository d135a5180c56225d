"""Facts about the machine the appliance runs on."""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def physical_cores(cpuinfo: Path = CPUINFO) -> int:
    """Physical CPU cores (hyper-threads not counted): llama.cpp runs best with one thread per core."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not key and core_id:
            cores.add((physical_id, core_id))
            physical_id = core_id = ""
    return len(cores) or os.cpu_count() or 1
