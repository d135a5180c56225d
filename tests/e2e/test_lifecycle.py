"""Ctrl-C stops everything cleanly and a second start works; a killed gateway takes its workers along."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.server import RunningAppliance, serve, start_appliance


def _worker_pid(appliance: RunningAppliance) -> int:
    engines = httpx.get(f"{appliance.base_url}/admin/engines", headers=appliance.headers(appliance.admin_key))
    pid: int = engines.json()["data"][0]["pid"]
    return pid


def _gone(pid: int, within_s: float) -> bool:
    """Whether process `pid` has exited (or is only a zombie) within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"


def test_ctrl_c_leaves_no_worker_and_no_socket_and_restarts(tmp_path: Path, model_path: Path) -> None:
    """SIGINT: the usual 130 exit, no traceback, the worker gone, its socket removed; serving again works."""
    first = start_appliance(tmp_path / "home", model_path)
    worker = _worker_pid(first)
    assert first.worker_socket().exists()
    assert first.stop() == 130
    assert "Traceback" not in first.log
    assert "Application shutdown complete" in first.log
    assert _gone(worker, within_s=5), "the worker outlived the gateway"
    assert list((first.home / "run").glob("*.sock")) == []
    second = serve(first.home, first.port, first.admin_key, first.user_key)
    try:
        reply = httpx.post(
            f"{second.base_url}/v1/completions",
            headers=second.headers(),
            json={"model": "default", "prompt": "Hello", "max_tokens": 2},
        )
        assert reply.status_code == 200
    finally:
        assert second.stop() == 130


def test_killed_gateway_takes_its_worker_along(tmp_path: Path, model_path: Path) -> None:
    """SIGKILL of `appliance serve` (no chance to clean up): the kernel still ends its worker."""
    running = start_appliance(tmp_path / "home", model_path)
    worker = _worker_pid(running)
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(timeout=10)
    try:
        assert _gone(worker, within_s=10), f"the worker was orphaned: {_describe(worker)}\n{running.log}"
    finally:
        if not _gone(worker, within_s=0):
            os.kill(worker, signal.SIGKILL)
