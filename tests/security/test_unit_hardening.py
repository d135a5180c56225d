"""Issue 17 items 2, 8 and 13: the service's unit runs unprivileged, writes only its data, dumps no core and
cannot reach the resolver or D-Bus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from api.doctor import parse_unit
from installer.errors import InstallStepError
from installer.systemd import check_units, listen_stream, socket_text, unit_text

PREFIX = Path("/opt/appliance")


def parse_section(text: str, name: str) -> dict[str, list[str]]:
    """One section of a unit file: each key with its values in order."""
    return parse_unit(text.replace("[Service]", "[Service-]").replace(f"[{name}]", "[Service]"))


@pytest.fixture(params=[False, True], ids=["cpu", "gpu"])
def service(request: pytest.FixtureRequest) -> dict[str, list[str]]:
    """The `[Service]` section of the installed unit, for a CPU and a GPU appliance."""
    return parse_unit(unit_text(PREFIX, PREFIX / "current", ("10.0.0.0/8",), request.param))


def test_the_service_runs_as_its_own_user(service: dict[str, list[str]]) -> None:
    """User= names an unprivileged user (root is the default without it)."""
    assert service["User"] == ["appliance"]
    assert service["Group"] == ["appliance"]


def test_only_the_data_directory_is_writable(service: dict[str, list[str]]) -> None:
    """Code, venvs, weights and installer.pyz are read-only to the service: one writable path, the data."""
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"] == [f"{PREFIX}/data"]
    assert service["Environment"] == [f"APPLIANCE_HOME={PREFIX}/data"]
    assert service["WorkingDirectory"] == ["/"]


def test_a_crash_writes_no_core(service: dict[str, list[str]]) -> None:
    """LimitCORE=0: a worker's core would hold decrypted weights."""
    assert service["LimitCORE"] == ["0"]


def test_the_service_may_lock_decrypted_weights_in_ram(service: dict[str, list[str]]) -> None:
    """LimitMEMLOCK=infinity: an unprivileged worker can mlock its weights, which then never reach swap."""
    assert service["LimitMEMLOCK"] == ["infinity"]


def test_resolver_and_dbus_are_inaccessible(service: dict[str, list[str]]) -> None:
    """The resolved and nscd sockets and D-Bus are hidden; the IP wall admits 127.0.0.1, not the 127.0.0.53
    stub resolver that `localhost` (127.0.0.0/8) would."""
    hidden = " ".join(service["InaccessiblePaths"]).split()
    assert {"-/run/systemd/resolve", "-/run/dbus", "-/run/nscd"} <= set(hidden)
    allowed = " ".join(service["IPAddressAllow"]).split()
    assert allowed == ["127.0.0.1", "::1", "10.0.0.0/8"]


def test_workers_keep_their_namespaces(service: dict[str, list[str]]) -> None:
    """The worker's private network namespace needs user and net namespaces; the filter allows unshare."""
    assert service["RestrictNamespaces"] == ["user net"]
    assert service["SystemCallFilter"] == ["@system-service"]
    assert "PrivateUsers" not in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_systemd_analyze_accepts_every_directive(tmp_path: Path, gpu: bool) -> None:
    """`systemd-analyze verify` knows every line (an unknown hardening key would silently do nothing)."""
    root = tmp_path / "current"
    (root / "venv" / "bin").mkdir(parents=True)
    exe = root / "venv" / "bin" / "appliance"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    service = unit_text(tmp_path, root, (), gpu)
    socket = socket_text(tmp_path, "127.0.0.1:8080", ("10.0.0.0/8",))
    assert check_units(tmp_path / "check", service, socket) == "checked with systemd-analyze verify"


def test_the_service_is_handed_its_socket_and_waits_for_an_installer(service: dict[str, list[str]]) -> None:
    """The service requires the socket unit (which keeps the port open across restarts); a start that
    socket activation triggers mid-upgrade waits for the installer's data lock (it runs no older version
    on data being migrated)."""
    unit = unit_text(PREFIX, PREFIX / "current", (), False)
    assert "Requires=appliance.socket\n" in unit
    assert "After=local-fs.target appliance.socket\n" in unit
    lock = f"exec /usr/bin/flock --shared {PREFIX}/run/data.lock true"
    assert service["ExecStartPre"] == [f"+/bin/sh -c 'test ! -d {PREFIX}/run || {lock}'"]
    assert service["TimeoutStartSec"] == ["infinity"]


def test_the_socket_unit_listens_on_the_settings_address_behind_the_same_wall() -> None:
    """ListenStream= is the [server] address (IPv6 bracketed, a port alone for every address); the IP
    wall of the service stands on the socket too, since systemd, not the service, opens it."""
    assert listen_stream("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert listen_stream("::", 8443) == "[::]:8443"
    assert listen_stream("", 8080) == "8080"
    with pytest.raises(InstallStepError, match="not an IP address"):
        listen_stream("appliance.example", 8080)
    socket = parse_section(socket_text(PREFIX, "10.0.0.5:8443", ("10.0.0.0/8",)), "Socket")
    assert socket["ListenStream"] == ["10.0.0.5:8443"]
    assert socket["Backlog"] == ["4096"]
    assert socket["IPAddressDeny"] == ["any"]
    assert socket["IPAddressAllow"] == ["127.0.0.1 ::1 10.0.0.0/8"]


def test_the_service_user_is_created_and_never_root_or_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing user is created as a system user without a login; root and nobody are refused."""
    import pwd

    from installer import errors, systemd

    created: list[list[str]] = []
    users = {"root": 0, "nobody": 65534}

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name not in users:
            raise KeyError(name)
        uid = users[name]
        return pwd.struct_passwd((name, "x", uid, uid, "", "/nonexistent", "/usr/sbin/nologin"))

    def useradd(_step: str, argv: list[str], _env: dict[str, str]) -> str:
        created.append(argv)
        users[argv[-1]] = 990
        return ""

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(systemd, "run_step", useradd)
    lines: list[str] = []
    assert systemd.ensure_service_user("appliance", lines.append) == (990, 990)
    assert created[0][0] == "/usr/sbin/useradd"
    assert {"--system", "--no-create-home", "/usr/sbin/nologin"} <= set(created[0])
    assert lines == ["service user appliance created (uid 990)"]
    assert systemd.ensure_service_user("appliance", lines.append) == (990, 990)
    assert len(created) == 1
    for name in ("root", "nobody"):
        with pytest.raises(errors.InstallStepError, match="its own unprivileged user"):
            systemd.ensure_service_user(name, lines.append)
