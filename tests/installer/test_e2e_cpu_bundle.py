"""The one slow test: build the real CPU bundle, install it offline from installer.pyz, chat with it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from installer.build import REPO
from installer.pack import generate_key_pair
from tests.installer.helpers import run_installer

READY_TIMEOUT_S = 120.0


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """Build, install offline (openssl path: no cryptography importable), serve; yield URL, key, prefix."""
    private, public = generate_key_pair(tmp_path / "keys", "release")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "installer.build",
            "bundle",
            "--profile",
            "cpu",
            "--key",
            str(private),
            "--version",
            "7",
            "--out",
            str(dist),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "members:" in built.stdout
    bundle, prefix = dist / "appliance-cpu-7.bundle", tmp_path / "prefix"
    done = run_installer(
        "install",
        str(bundle),
        "--prefix",
        str(prefix),
        "--trust",
        str(public),
        "--python",
        sys.executable,
        no_crypto=True,
        source=dist / "installer.pyz",
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
    appliance = str(prefix / "current" / "venv" / "bin" / "appliance")
    env = {"APPLIANCE_HOME": str(home), "PATH": os.environ["PATH"]}
    key = subprocess.run(
        [appliance, "keys", "create", "--name", "e2e", "--role", "user", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen([appliance, "serve"], env=env, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}", key, prefix
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_cpu_bundle_builds_installs_offline_and_serves(served: tuple[str, str, Path]) -> None:
    """The installed appliance (its own venv, its own registry) answers a chat completion."""
    url, key, prefix = served
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        headers=headers,
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
    )
    assert "current: 7" in status.stdout
