"""The gateway on a socket handed down to it (api/listen.py: systemd's socket-activation protocol), started
by the installer's real socket holder (installer/holder.py): it serves TLS and mutual TLS on the inherited
socket, binds nothing itself, and a restart keeps the port open, so a client connecting meanwhile is answered
by the next gateway instead of being refused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from api.listen import inherited_socket
from installer.build import REPO
from tests.e2e.server import APPLIANCE, RunningAppliance, cli, free_port
from tests.security.test_tls import Pki, client_tls, make_pki, tls_lines

HOLDER = REPO / "installer" / "holder.py"


def test_variables_meant_for_another_process_are_dropped() -> None:
    """LISTEN_PID of another process (a parent's variables that leaked down): no socket, and the variables
    go, so that the workers this process starts never take fd 3 for theirs."""
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "x", "PATH": "/bin"}
    assert inherited_socket(env) is None
    assert env == {"PATH": "/bin"}


def _hold(home: Path, port: int, folder: Path) -> subprocess.Popen[bytes]:
    """The holder on every address, running `appliance serve` on `home` as its child."""
    argv = [sys.executable, "-I", str(HOLDER), "--host", "0.0.0.0", "--port", str(port)]
    argv += ["--status", str(folder / "child.json"), "--linger", "5", "--", APPLIANCE, "serve"]
    with (home / "serve.log").open("ab") as log:
        return subprocess.Popen(
            argv,
            env=os.environ | {"APPLIANCE_HOME": str(home)},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _child(folder: Path) -> dict[str, int | None]:
    status: dict[str, int | None] = json.loads((folder / "child.json").read_text())
    return status


def _chat(running: RunningAppliance, pki: Pki) -> str:
    """One chat on a fresh TLS connection with the client certificate, no retries, a long read timeout."""
    with httpx2.Client(verify=client_tls(pki, pki.client_cert, pki.client_key)) as http:
        client = openai.OpenAI(
            base_url=f"{running.base_url}/v1",
            api_key=running.user_key,
            max_retries=0,
            timeout=180,
            http_client=http,
        )
        answer = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
        )
    return answer.choices[0].message.content or ""


def test_tls_on_the_held_socket_across_a_restart(tmp_path: Path, model_path: Path) -> None:
    """HTTPS with mutual TLS on the inherited socket; the holder's restart (SIGHUP) starts a new gateway on
    the same socket, and a chat sent while it loads is answered by it; SIGTERM closes the port."""
    pki, home, port = make_pki(tmp_path / "pki"), tmp_path / "home", free_port()
    home.mkdir()
    (home / "settings.toml").write_text(
        f"[server]\n{tls_lines(pki)}port = {port}\n[workers]\nthreads = 2\ncontext_length = 1024\n"
    )
    cli(home, "models", "add", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    admin = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    holder = _hold(home, port, tmp_path)
    running = RunningAppliance(
        home, port, admin, user, holder, "https", client_tls(pki, pki.client_cert, pki.client_key)
    )
    try:
        running.wait_ready()
        assert _chat(running, pki)
        assert "serving on the inherited socket ('0.0.0.0', " in running.log
        first = _child(tmp_path)["pid"]
        holder.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while _child(tmp_path)["generation"] != 2:
            assert time.monotonic() < deadline, running.log
            time.sleep(0.05)
        # The new gateway is loading its model: this connection waits in the backlog, then is served.
        assert _chat(running, pki)
        assert _child(tmp_path)["pid"] not in (None, first)
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 0
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        child = _child(tmp_path)["pid"]
        if child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
    assert "Traceback" not in running.log, running.log


def test_plain_http_on_an_inherited_socket_beyond_loopback_is_refused(
    tmp_path: Path, model_path: Path
) -> None:
    """The plain-HTTP check judges the socket the gateway is handed, not the settings' host: a holder on
    every address cannot make a loopback-only, TLS-less appliance serve in clear text beyond the box."""
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    (home / "settings.toml").write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    cli(home, "models", "add", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    holder = _hold(home, port, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "child.json").is_file() or _child(tmp_path)["exit"] is None:
            assert time.monotonic() < deadline, (home / "serve.log").read_text()
            time.sleep(0.1)
        assert _child(tmp_path)["exit"] == 1
        assert "refusing plain HTTP on 0.0.0.0" in (home / "serve.log").read_text()
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
