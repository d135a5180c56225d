"""The console driven in tmux by tests/tui/tmux_drive.sh, the way a person at a terminal would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.e2e.server import APPLIANCE, RunningAppliance

SCRIPT = Path(__file__).with_name("tmux_drive.sh")


def test_key_created_in_tmux_works_with_curl(gateway: RunningAppliance, tmp_path: Path) -> None:
    """The script creates a key on screen, reads it back with capture-pane, and curl gets 200 with it."""
    assert shutil.which("tmux"), "tmux is required for this test (apt-get install tmux)"
    key_file = tmp_path / "admin.key"
    key_file.write_text(gateway.admin_key + "\n")
    key_file.chmod(0o600)
    done = subprocess.run(
        ["bash", str(SCRIPT), gateway.base_url, str(key_file)],
        env=os.environ | {"APPLIANCE": APPLIANCE, "TERM": "xterm-256color"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200", done.stdout + done.stderr
