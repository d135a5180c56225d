"""No network egress, proven: the guard in the running processes, and a packet capture around a whole life.

Why an admin report and not a debug hook: `GET /admin/egress` (and `appliance doctor`) is a diagnostic an
admin needs in production anyway. Its guard check runs inside the serving gateway process, so a refusal there
is the real gateway's tripwire; its worker check starts `python -m appliance.engines.llamacpp` exactly as the
supervisor does (same environment, same namespace wrapper, same entry point, which installs the guard before
it reads its arguments) in the worker's self-test mode. Both refusals land in the audit log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from installer.pack import generate_key_pair
from tests.e2e.server import RunningAppliance
from tests.installer.helpers import REPO

CANARY = b"egress-test-canary"
# The deliberate packet that proves the capture works: plain Python, no guard, straight to a public address.
_SEND_CANARY = (
    f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto({CANARY!r}, ('192.0.2.1', 9))"
)


def test_gateway_and_worker_refuse_a_public_address(appliance: RunningAppliance) -> None:
    """The running gateway and a worker started like the supervisor's refuse TEST-NET, and it is audited."""
    admin = appliance.headers(appliance.admin_key)
    with httpx.Client(base_url=appliance.base_url, timeout=120) as http:
        assert http.get("/admin/egress", headers=appliance.headers()).status_code == 403
        report = http.get("/admin/egress", headers=admin).json()
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["guard"]["level"] == "ok"
        assert f"pid {appliance.process.pid}" in checks["guard"]["detail"]  # the serving process itself
        assert "socket.connect to 192.0.2.1:9" in checks["guard"]["detail"]
        assert checks["worker guard"]["level"] == "ok"
        assert "refused in a private network namespace" in checks["worker guard"]["detail"]
        assert "egress.blocked process=llamacpp-worker" in checks["worker guard"]["detail"]
        running = [c for name, c in checks.items() if name.startswith("running worker")]
        assert [c["level"] for c in running] == ["ok"]  # the serving worker is in its own namespace
        assert report["ok"] is True
        audit = http.get("/admin/audit", headers=admin).json()["data"]
    blocked = [e for e in audit if e["action"] == "egress.blocked"]
    assert {e["outcome"] for e in blocked} == {"denied"}
    assert any("process=llamacpp-worker" in e["detail"] for e in blocked)
    assert any(e["target"] == "192.0.2.1:9" and "llamacpp" not in e["detail"] for e in blocked)
    assert "egress.blocked process=appliance" in appliance.log  # the gateway's stderr line too


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def honeypot_namespace() -> Iterator[str]:
    """A network namespace whose only way out is a veth pair to a honeypot namespace (its default route).

    IPv6 is off on both ends so the kernel sends no router solicitations or MLD reports of its own.
    """
    suffix = str(os.getpid())
    app, pot = f"egress-app-{suffix}", f"egress-pot-{suffix}"
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("NO-EGRESS PROOF NOT RUN: needs root and iproute2 to create network namespaces")
    try:
        _ip("netns", "add", app)
    except RuntimeError as error:
        pytest.skip(f"NO-EGRESS PROOF NOT RUN: the kernel refuses network namespaces ({error})")
    try:
        _ip("netns", "add", pot)
        _ip(
            "link",
            "add",
            f"va{suffix}"[:15],
            "netns",
            app,
            "type",
            "veth",
            "peer",
            "name",
            f"vp{suffix}"[:15],
            "netns",
            pot,
        )
        for namespace, interface, address in (
            (app, f"va{suffix}", "10.213.0.2/30"),
            (pot, f"vp{suffix}", "10.213.0.1/30"),
        ):
            _ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            _ip("-n", namespace, "addr", "add", address, "dev", interface[:15])
            _ip("-n", namespace, "link", "set", interface[:15], "up")
        _ip("-n", app, "link", "set", "lo", "up")
        _ip("-n", app, "route", "add", "default", "via", "10.213.0.1")
        yield app
    finally:
        for namespace in (app, pot):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def _frames(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_whole_lifecycle_sends_no_packet(honeypot_namespace: str, tmp_path: Path) -> None:
    """Install, serve, 200 mixed requests, a worker crash and restart, admin actions, shutdown: 0 frames."""
    # Building is the vendor's side (it may use pip's cache): outside the namespace, before the capture.
    private, public = generate_key_pair(tmp_path / "keys", "release")
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "installer.build", "bundle", "--profile", "cpu", "--key", str(private)]
    built = subprocess.run(
        [*build, "--out", str(dist)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    in_namespace = ["ip", "netns", "exec", honeypot_namespace, sys.executable]
    # A short prefix: the workers' unix sockets live below it, and AF_UNIX paths end at 107 bytes.
    prefix = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp")) / "p"
    frames = tmp_path / "frames.jsonl"
    capture = subprocess.Popen(
        [*in_namespace, "-m", "tests.e2e.packet_capture", str(frames)], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == b"ready"
        # First prove that the capture sees what leaves this namespace: one deliberate datagram.
        subprocess.run([*in_namespace, "-I", "-c", _SEND_CANARY], check=True, timeout=60)
        deadline = time.monotonic() + 30
        while not any(CANARY.hex() in f["head"] for f in _frames(frames)):
            assert time.monotonic() < deadline, f"the capture never saw the canary: {_frames(frames)}"
            time.sleep(0.1)
        time.sleep(1)  # let the canary's ARP exchange finish, so only the appliance's frames come after
        before = len(_frames(frames))
        lifecycle = subprocess.run(
            [
                *in_namespace,
                "-m",
                "tests.e2e.egress_lifecycle",
                str(dist),
                str(public),
                str(prefix),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        capture.terminate()
        capture.wait(timeout=30)
        shutil.rmtree(prefix.parent, ignore_errors=True)
    assert lifecycle.returncode == 0, lifecycle.stderr[-4000:]
    summary = json.loads(lifecycle.stdout.strip().splitlines()[-1])
    assert sum(summary["requests"].values()) == 200
    assert set(summary["requests"]) == {
        "chat",
        "stream",
        "embeddings",
        "unknown-model",
        "bad-body",
        "bad-key",
    }
    assert summary["installed"].startswith("install: ok")
    assert summary["egress_ok"] is True
    leaked = _frames(frames)[before:]
    assert leaked == [], f"{len(leaked)} frames left the appliance's namespace: {leaked[:5]}"
