"""Choosing the interpreter for the appliance's venv: by absolute path only, never by a PATH look-up.

The installer runs as root with whatever PATH the admin's shell has; a `python3.11` found through it could
be anything a user put in `~/bin` or `/tmp`. So the candidates are the interpreter the admin named (an
absolute path), the host Python running this installer (trusted already: it runs the verifier), and the
system's own folders, in that order; the first whose version and platform match the bundle wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from installer.errors import TargetError, UsageError
from installer.manifest import Target

SYSTEM_FOLDERS = (Path("/usr/bin"), Path("/usr/local/bin"), Path("/bin"))
PROBE_TIMEOUT_S = 60
_PROBE = "import sys,sysconfig;print(f'{sys.version_info[0]}.{sys.version_info[1]}',sysconfig.get_platform())"


def _describe(candidate: str) -> str | None:
    """`3.11 linux_x86_64` for an interpreter that runs, else None (asked with -I: no user site, and no
    PYTHON* variable changes what it reports)."""
    try:
        done = subprocess.run(
            [candidate, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.split()
    if done.returncode != 0 or len(found) != 2:
        return None
    return f"{found[0]} {found[1].replace('-', '_').replace('.', '_')}"


def candidates(target: Target, wanted: str | None) -> list[str]:
    """The interpreters to try, each an absolute path; `--python` alone when the admin gave one."""
    if wanted is not None:
        if not os.path.isabs(wanted):
            raise UsageError(
                f"--python {wanted!r}: give the interpreter's absolute path, e.g. /usr/bin/python3"
            )
        return [wanted]
    found = [sys.executable] if sys.executable and os.path.isabs(sys.executable) else []
    found += [str(folder / f"python{target.python}") for folder in SYSTEM_FOLDERS]
    return [path for path in dict.fromkeys(found) if os.access(path, os.X_OK)]


def python_for(target: Target, wanted: str | None) -> str:
    """An interpreter matching the bundle's target (the wheels are built for exactly that Python)."""
    want = f"{target.python} {target.platform}"
    tried = []
    for candidate in candidates(target, wanted):
        seen = _describe(candidate)
        if seen == want:
            return candidate
        tried.append(f"{candidate} is {seen or 'unusable'}")
    looked = ", ".join(tried) or f"no python{target.python} in {', '.join(map(str, SYSTEM_FOLDERS))}"
    raise TargetError(
        f"bundle targets Python {target.python} on {target.platform}; {looked} (pass --python /abs/path)"
    )
