"""The egress tripwire, the offline child environment and `appliance doctor`.

An audit hook cannot be removed, so every test that installs a guard does so in a fresh interpreter: the
pytest process itself stays unguarded for the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from api.doctor import parse_unit, unit_checks
from appliance.egress import allow_list
from appliance.engines.kind import worker_environment
from appliance.errors import SettingsError
from appliance.registry.registry import open_registry
from appliance.settings import load_settings
from installer.egress import AllowList, check
from installer.systemd import check_unit, socket_text, unit_text

APPLIANCE = str(Path(sys.executable).parent / "appliance")
REPO = Path(__file__).resolve().parents[2]


def _guarded(home: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter after the guard `appliance …` commands install for `home`."""
    script = "from appliance.egress import install_command_guard\nfrom pathlib import Path\n"
    script += f"install_command_guard(Path({str(home)!r}))\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def _attempt(statement: str) -> str:
    """Code that prints `refused <code>` or `allowed` for one statement."""
    return textwrap.dedent(
        f"""
        import socket
        from appliance.errors import EgressBlockedError
        try:
            {statement}
        except EgressBlockedError as error:
            print("refused", error.code, error.message)
        else:
            print("allowed")
        """
    )


class _FakeSocket:
    def __init__(self, family: int) -> None:
        self.family = family


def test_check_allows_loopback_unix_and_the_allow_list_only() -> None:
    """The pure decision: loopback, AF_UNIX and allow-listed networks pass; the rest is refused."""
    allow = AllowList.parse(["10.20.0.0/16", "gpu-2.enclave"])
    inet, inet6 = _FakeSocket(socket.AF_INET), _FakeSocket(socket.AF_INET6)
    assert check("socket.connect", (inet, ("127.0.0.1", 80)), allow) is None
    assert check("socket.connect", (inet6, ("::1", 80, 0, 0)), allow) is None
    assert check("socket.connect", (_FakeSocket(socket.AF_UNIX), "/run/x.sock"), allow) is None
    assert check("socket.connect", (inet, ("10.20.3.4", 443)), allow) is None
    refused = check("socket.connect", (inet, ("192.0.2.1", 9)), allow)
    assert refused is not None
    assert refused.target == "192.0.2.1:9"
    assert check("socket.sendto", (inet, ("8.8.8.8", 53)), allow) is not None
    assert check("socket.sendmsg", (inet, None), allow) is None  # connected socket: checked at connect
    assert check("socket.getaddrinfo", ("example.com", 443, 0, 0, 0), allow) is not None
    assert check("socket.getaddrinfo", ("localhost", 8080, 0, 0, 0), allow) is None
    assert check("socket.getaddrinfo", ("gpu-2.enclave", 8000, 0, 0, 0), allow) is None
    assert check("socket.getaddrinfo", ("0.0.0.0", 8080, 0, 0, 0), allow) is None  # a literal: no look-up
    assert check("socket.gethostbyname", ("example.com",), allow) is not None
    assert check("socket.gethostbyaddr", ("8.8.8.8",), allow) is not None
    assert check("socket.connect", (inet, ("example.com", 80)), allow) is not None
    assert check("open", ("/etc/hosts", "r", 0), allow) is None


def test_a_bad_allow_entry_is_a_settings_error(appliance_home: Path) -> None:
    """A CIDR typo must not silently become a host name."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text('[egress]\nallow = ["10.0.0.0/33"]\n')
    with pytest.raises(SettingsError, match=r"egress\.allow"):
        allow_list(load_settings(appliance_home))


def test_a_public_connect_is_refused_with_the_error_and_audited(appliance_home: Path) -> None:
    """TCP to TEST-NET-1 port 9: EgressBlockedError, a line on stderr and an `egress.blocked` audit row."""
    appliance_home.mkdir(parents=True)
    open_registry(appliance_home / "registry.db")
    done = _guarded(appliance_home, _attempt("socket.create_connection(('192.0.2.1', 9), timeout=5)"))
    assert done.stdout.startswith(
        "refused egress_blocked network egress blocked: socket.connect to 192.0.2.1:9"
    )
    assert "egress.blocked process=appliance" in done.stderr
    events = [
        e
        for e in open_registry(appliance_home / "registry.db").audit.recent()
        if e.action == "egress.blocked"
    ]
    assert [(e.outcome, e.target) for e in events] == [("denied", "192.0.2.1:9")]


def test_udp_sendto_and_name_lookups_are_refused(appliance_home: Path) -> None:
    """No datagram to a public address, no DNS for a public name, no reverse look-up."""
    for statement in (
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 9))",
        "socket.getaddrinfo('example.com', 443)",
        "socket.gethostbyname('example.com')",
        "socket.gethostbyaddr('192.0.2.1')",
    ):
        done = _guarded(appliance_home, _attempt(statement))
        assert done.stdout.startswith("refused egress_blocked"), (statement, done.stdout, done.stderr)


def test_loopback_unix_sockets_and_localhost_are_allowed(appliance_home: Path, tmp_path: Path) -> None:
    """A real TCP round trip on loopback, a real unix socket, and `localhost` resolving."""
    body = f"""
        import socket
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
        client.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        unix = socket.socket(socket.AF_UNIX)
        unix.bind({str(tmp_path / "s.sock")!r})
        unix.listen()
        other = socket.socket(socket.AF_UNIX)
        other.connect({str(tmp_path / "s.sock")!r})
        socket.getaddrinfo("localhost", 80)
        print("all allowed")
    """
    done = _guarded(appliance_home, body)
    assert done.stdout.strip() == "all allowed", done.stderr


def test_an_allow_listed_address_is_allowed(appliance_home: Path) -> None:
    """`[egress] allow` opens exactly that network (UDP connect: the test sends no packet)."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text('[egress]\nallow = ["198.51.100.0/24"]\n')
    inside = "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('198.51.100.7', 9))"
    assert _guarded(appliance_home, _attempt(inside)).stdout.strip() == "allowed"
    outside = "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('198.51.101.7', 9))"
    assert _guarded(appliance_home, _attempt(outside)).stdout.startswith("refused")


def test_the_installer_guard_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Isolated, without site-packages, as the installer runs: refused with its own error and exit code."""
    script = textwrap.dedent(
        f"""
        import socket, sys
        sys.path.insert(0, {str(REPO)!r})
        from installer.egress import AllowList, install_guard, stderr_audit
        from installer.errors import EgressRefusedError
        install_guard(AllowList(), stderr_audit("installer"), EgressRefusedError)
        assert not any(m.split(".")[0] == "appliance" for m in sys.modules)
        try:
            socket.create_connection(("192.0.2.1", 9), timeout=5)
        except EgressRefusedError as error:
            sys.exit(error.exit_code)
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 80, done.stderr
    assert "egress.blocked process=installer" in done.stderr


def test_children_get_the_offline_variables_and_no_proxies() -> None:
    """Proxies in either case are dropped; the four offline variables are set; the rest is kept."""
    base = {
        "http_proxy": "http://p:3128",
        "HTTPS_PROXY": "http://p:3128",
        "All_Proxy": "socks5://p",
        "NO_PROXY": "localhost",
        "no_proxy": "localhost",
        "PATH": "/usr/bin",
        "HF_HUB_OFFLINE": "0",
    }
    environment = worker_environment(base)
    assert environment == {
        "PATH": "/usr/bin",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def _doctor(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    return subprocess.run(
        [APPLIANCE, "doctor", "--json", *args],
        env=environment | {"APPLIANCE_HOME": str(home)} | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_reports_a_guarded_isolated_appliance(appliance_home: Path, tmp_path: Path) -> None:
    """Guard active, workers refused and isolated, the installer's unit accepted: exit 0."""
    unit = tmp_path / "appliance.service"
    unit.write_text(
        unit_text(Path("/opt/appliance"), Path("/opt/appliance/current"), ("10.1.0.0/16",), False)
    )
    done = _doctor(appliance_home, "--unit", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert levels["guard"] == levels["worker guard"] == levels["unit IPAddressDeny"] == "ok"
    worker = next(c["detail"] for c in report["checks"] if c["name"] == "worker guard")
    assert "private network namespace" in worker
    assert report["ok"] is True


def test_doctor_fails_on_a_weak_unit_and_on_proxies(appliance_home: Path, tmp_path: Path) -> None:
    """A unit without IPAddressDeny, or a proxy in the environment, is reported and exits 1."""
    unit = tmp_path / "weak.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestrictAddressFamilies=AF_UNIX AF_INET AF_PACKET\n")
    failed = {c.name for c in unit_checks(unit) if c.level == "fail"}
    assert failed == {"unit IPAddressDeny", "unit IPAddressAllow", "unit RestrictAddressFamilies"}
    assert _doctor(appliance_home, "--unit", str(unit)).returncode == 1
    done = _doctor(appliance_home, "--unit", str(tmp_path / "none"), HTTPS_PROXY="http://proxy:3128")
    assert done.returncode == 1
    proxy = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "proxy variables")
    assert proxy["level"] == "fail"
    assert "HTTPS_PROXY" in proxy["detail"]


def test_parse_unit_reads_repeated_service_keys() -> None:
    """Keys may repeat; comments and other sections are ignored."""
    text = "[Unit]\nIPAddressDeny=no\n[Service]\n# IPAddressDeny=x\n"
    text += "IPAddressAllow=localhost\nIPAddressAllow=10.0.0.0/8\n"
    assert parse_unit(text) == {"IPAddressAllow": ["localhost", "10.0.0.0/8"]}


def test_the_servers_uvloop_shows_its_connections_to_the_guard(appliance_home: Path) -> None:
    """uvloop connects in libuv, below `socket`; the loop our uvicorn servers use refuses anyway."""
    body = """
        import asyncio
        import httpx
        from appliance.egress import new_guarded_loop
        from appliance.errors import EgressBlockedError

        async def attempts():
            loop = asyncio.get_running_loop()
            print(type(loop).__mro__[1].__module__)
            for host in ("192.0.2.1", "example.com"):
                try:
                    await loop.create_connection(asyncio.Protocol, host, 9)
                except EgressBlockedError as error:
                    print("refused", error.message)
            try:
                async with httpx.AsyncClient() as client:
                    await client.get("http://example.com/")
            except EgressBlockedError as error:
                print("refused", error.message)

        with asyncio.Runner(loop_factory=new_guarded_loop) as runner:
            runner.run(attempts())
    """
    lines = _guarded(appliance_home, body).stdout.splitlines()
    reason = " (only loopback, unix sockets and the [egress] allow list are permitted)"
    assert lines == [
        "uvloop",
        "refused network egress blocked: egress.connect to 192.0.2.1:9" + reason,
        "refused network egress blocked: egress.connect to example.com:9" + reason,
        "refused network egress blocked: socket.getaddrinfo to example.com" + reason,
    ]


def test_the_gateways_own_address_is_allowed(appliance_home: Path) -> None:
    """Serving on a LAN address: the console and doctor on this host may connect to it, nothing else there."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text('[server]\nhost = "10.44.0.5"\n')
    assert allow_list(load_settings(appliance_home)).entries() == ["10.44.0.5/32"]
    assert AllowList().allows_address("0.0.0.0")  # as a destination: this host


def test_the_unit_walls_the_service_and_passes_systemd_analyze(tmp_path: Path) -> None:
    """IPAddressDeny=any; IPAddressAllow: loopback and --allow-ip; user+net namespaces; verify accepts it."""
    root = tmp_path / "versions" / "1"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "appliance").write_text("#!/bin/sh\n")
    (root / "venv" / "bin" / "appliance").chmod(0o755)
    unit = tmp_path / "appliance.service"
    unit.write_text(unit_text(tmp_path, root, ("192.168.5.0/24", "10.9.0.0/16"), False))
    # The service requires its socket unit (systemd-analyze looks for it beside the service).
    (tmp_path / "appliance.socket").write_text(socket_text(tmp_path, "127.0.0.1:8080", ()))
    service = parse_unit(unit.read_text())
    assert service["IPAddressDeny"] == ["any"]
    assert service["IPAddressAllow"] == ["127.0.0.1 ::1 192.168.5.0/24 10.9.0.0/16"]
    assert service["RestrictNamespaces"] == ["user net"]  # what a worker's private netns needs, no more
    enclave = AllowList.parse(["10.9.3.0/24", "gpu-2.enclave"])
    assert all(c.level == "ok" for c in unit_checks(unit, enclave))
    outside = {c.name: c for c in unit_checks(unit, AllowList.parse(["172.16.0.0/12"]))}
    assert outside["unit enclave"].level == "warn"
    assert "172.16.0.0/12" in outside["unit enclave"].detail
    verified = shutil.which("systemd-analyze", path="/usr/bin:/bin") is not None
    expected = (
        "checked with systemd-analyze verify" if verified else "systemd-analyze not present; unit not checked"
    )
    assert check_unit(unit) == expected
