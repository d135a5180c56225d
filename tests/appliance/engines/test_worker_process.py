"""The worker as its own process: it serves on its unix socket and exits cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _wait_healthy(socket_path: Path, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://worker") as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the worker exited during start-up"
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
    raise AssertionError("the worker never became healthy")


def test_repeated_sigterm_exits_promptly_and_removes_the_socket(tmp_path: Path, model_path: Path) -> None:
    """Three SIGTERMs in a row (an impatient supervisor or admin) still end in a clean, quick exit."""
    socket_path = tmp_path / "w.sock"
    command = [
        sys.executable, "-m", "appliance.engines.llamacpp", "--model", str(model_path), "--name", "w",
        "--socket", str(socket_path), "--context-length", "256", "--threads", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        _wait_healthy(socket_path, process)
        for _ in range(3):
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr
    assert not socket_path.exists()
