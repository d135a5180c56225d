"""A real `appliance serve` in a subprocess, set up through the real CLI, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

APPLIANCE = str(Path(sys.executable).parent / "appliance")
READY_TIMEOUT_S = 120.0
PINNED = "[residency]\nkeep_alive_s = -1\n"
"""The harness's appliances keep their models loaded however long a test leaves them idle (a session's
shared appliance waits while other modules run): the tests of residency set their own keep-alive."""


def process_alive(pid: int) -> bool:
    """Whether a process with `pid` still exists (a worker the test watches stop)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli(home: Path, *args: str) -> str:
    """Run the `appliance` command against `home` and return its stdout; a failure fails the test."""
    environment = os.environ | {"APPLIANCE_HOME": str(home)}
    done = subprocess.run([APPLIANCE, *args], env=environment, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"appliance {' '.join(args)} failed: {done.stderr}"
    return done.stdout


@dataclass
class RunningAppliance:
    """One `appliance serve` process with an admin and a user key."""

    home: Path
    port: int
    admin_key: str
    user_key: str
    process: subprocess.Popen[bytes]
    scheme: str = "http"
    verify: ssl.SSLContext | bool = field(default=True, repr=False)
    """How this harness checks the gateway's certificate (and shows its own) when it serves HTTPS."""

    @property
    def base_url(self) -> str:
        """The gateway's root URL."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Authorization headers for `key` (the user key by default)."""
        return {"Authorization": f"Bearer {key or self.user_key}"}

    def worker_socket(self, model: str = "smollm2-135m") -> Path:
        """The unix socket of a model's worker."""
        return self.home / "run" / f"{model}.sock"

    @property
    def log(self) -> str:
        """What `appliance serve` printed so far (stdout and stderr)."""
        return (self.home / "serve.log").read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until /health/ready says ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "appliance serve exited during start-up"
            try:
                if (
                    httpx.get(
                        f"{self.base_url}/health/ready", headers=self.headers(), timeout=2, verify=self.verify
                    ).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("appliance serve did not become ready")

    def stop(self, timeout_s: float = 30.0) -> int:
        """Ctrl-C, as a person at the terminal would, and wait for the exit status (130 for SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_appliance(
    home: Path,
    model: Path,
    settings: str = "",
    *,
    server: str = 'host = "127.0.0.1"\n',
    verify: ssl.SSLContext | None = None,
) -> RunningAppliance:
    """Set up `home` with the CLI (model, keys), write settings, start serving, wait until ready.
    `server`: the `[server]` lines besides the port; `verify`: the TLS context to reach it with (HTTPS)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(
        PINNED
        + f"[server]\n{server}port = {port}\n[workers]\nthreads = 2\ncontext_length = 2048\n"
        + settings
    )
    cli(home, "models", "add", str(model), "--name", "smollm2-135m", "--alias", "default")
    admin_key = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user_key = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    return serve(home, port, admin_key, user_key, verify=verify)


def serve(
    home: Path, port: int, admin_key: str, user_key: str, *, verify: ssl.SSLContext | None = None
) -> RunningAppliance:
    """Start `appliance serve` on an already set-up home and wait until it is ready (over HTTPS with
    `verify`)."""
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [APPLIANCE, "serve"], env=os.environ | {"APPLIANCE_HOME": str(home)}, stdout=log, stderr=log
        )
    if verify is None:
        running = RunningAppliance(home, port, admin_key, user_key, process)
    else:
        running = RunningAppliance(home, port, admin_key, user_key, process, "https", verify)
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running
