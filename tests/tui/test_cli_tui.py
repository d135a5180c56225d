"""`appliance tui` refuses to start with one line and exit status 1 when it has no usable key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.server import APPLIANCE, RunningAppliance


def run_tui(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `appliance tui` without a terminal (it must stop before drawing anything)."""
    environment = {k: v for k, v in os.environ.items() if k != "APPLIANCE_ADMIN_KEY"}
    if key is not None:
        environment["APPLIANCE_ADMIN_KEY"] = key
    return subprocess.run(
        [APPLIANCE, "tui", *args],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_key_file_is_one_line(tmp_path: Path) -> None:
    """An unreadable key file names the file and the reason."""
    done = run_tui("--url", "http://127.0.0.1:9", "--key-file", str(tmp_path / "nope.key"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {tmp_path / 'nope.key'}: cannot read (No such file or directory)"


def test_user_key_is_refused(gateway: RunningAppliance) -> None:
    """A user key (from the environment) is refused by the admin API before the screen opens."""
    done = run_tui("--url", gateway.base_url, key=gateway.user_key)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: the gateway refused the key: This route needs an admin key."
