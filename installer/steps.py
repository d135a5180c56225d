"""Running one install step as a child process: a clean, offline environment and a one-line failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from installer.egress import offline_environment
from installer.errors import InstallStepError

Report = Callable[[str], None]
STEP_TIMEOUT_S = 3600


def clean_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a step: offline, and nothing that could steer pip or Python elsewhere."""
    # pip must see only the bundle: no config files, no index or find-links from the environment.
    env = {k: v for k, v in offline_environment(os.environ).items() if not k.startswith(("PIP_", "PYTHON"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if home is not None:
        env["APPLIANCE_HOME"] = str(home)
    return env


def as_user(account: tuple[int, int] | None) -> dict[str, Any]:
    """Popen arguments that run a child as `account` (uid, gid) with no other groups; {} for ourselves."""
    if account is None:
        return {}
    # "/" as the working directory: root's own may be closed to the service user.
    return {"user": account[0], "group": account[1], "extra_groups": [], "cwd": "/"}


def run_step(step: str, argv: list[str], env: dict[str, str], account: tuple[int, int] | None = None) -> str:
    """Run `argv` (as `account`, else as ourselves) and return its output; a failure is an
    InstallStepError with its last line of stderr."""
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, **as_user(account)
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InstallStepError(f"{step} failed: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InstallStepError(f"{step} failed (exit {done.returncode}): {last}")
    output: str = done.stdout
    return output
