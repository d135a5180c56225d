"""A slow test: the real CPU bundle (built once per session), installed offline from installer.pyz, started,
asked for a chat."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.installer.conftest import CpuBundle
from tests.installer.helpers import run_installer

READY_TIMEOUT_S = 120.0


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path, cpu_bundle: CpuBundle) -> Iterator[tuple[str, str, Path]]:
    """Install the session's CPU bundle offline (openssl path: no cryptography importable), `start`; yield
    URL, admin key, prefix."""
    prefix = tmp_path / "prefix"
    done = run_installer(
        "install",
        str(cpu_bundle.bundle),
        "--prefix",
        str(prefix),
        "--trust",
        str(cpu_bundle.public),
        "--python",
        sys.executable,
        no_crypto=True,
        source=cpu_bundle.installer,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Every model the recipe names is carried (the recipe and ./build.sh setup agree on the files).
    assert "model smollm2-135m: registered" in done.stderr
    assert "model gemma-3-270m: registered" in done.stderr
    home, port = prefix / "data", _port()
    # Every settings key is optional; this replaces the defaults the install wrote, to use a free port.
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[workers]\nthreads = 2\ncontext_length = 1024\n'
    )
    # `start` from the installed installer.pyz, as an admin would: the admin key, the supervised service,
    # and a wait for /health/ready (run in this network namespace, so that the test reaches the service).
    pyz = prefix / "current" / "bundle" / "installer" / "installer.pyz"
    timeout = str(READY_TIMEOUT_S)
    started = run_installer(
        "start", "--prefix", str(prefix), "--ready-timeout", timeout, source=pyz, offline=False
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"ready: http://127.0.0.1:{port}" in started.stdout
        yield f"http://127.0.0.1:{port}", (home / "admin.key").read_text().strip(), prefix
    finally:
        stopped = run_installer("stop", "--prefix", str(prefix), source=pyz, offline=False)
    assert stopped.stdout == "stopped\n", stopped.stderr  # it was still serving at the end


def test_cpu_bundle_builds_installs_offline_and_serves(served: tuple[str, str, Path]) -> None:
    """The installed appliance (its own venv, its own registry) answers a chat completion."""
    url, key, prefix = served
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "default", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]
    status = run_installer(
        "status",
        "--prefix",
        str(prefix),
        source=prefix / "current" / "bundle" / "installer" / "installer.pyz",
        offline=False,
    )
    assert "current: 7" in status.stdout
    assert ", version 7, ready at " in status.stdout
