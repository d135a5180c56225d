"""Hardened systemd units for the installed appliance (the service and the socket it is handed), checked with
`systemd-analyze verify` if present."""

from __future__ import annotations

import ipaddress
import pwd
import shutil
import subprocess
from pathlib import Path

from installer.errors import InstallStepError
from installer.steps import Report, clean_env, run_step

SERVICE_USER = "appliance"
USERADD = Path("/usr/sbin/useradd")
UNIT_NAME = "appliance.service"
SOCKET_NAME = "appliance.socket"
FLOCK = "/usr/bin/flock"
BACKLOG = 4096  # as the gateway listens on an inherited socket (api/listen.py)


def serve_argv(root: Path) -> list[str]:
    """How the version whose folder is `root` serves: the unit's ExecStart and the supervised command."""
    return [f"{root}/venv/bin/appliance", "serve"]


def _allowed(allow_ips: tuple[str, ...]) -> str:
    # Loopback by address, not `localhost` (all of 127.0.0.0/8): the resolver stubs listen on 127.0.0.53,
    # 127.0.0.54 or 127.0.1.1, and a DNS query is an exfiltration path the wall must close too.
    return " ".join(("127.0.0.1", "::1", *allow_ips))


def listen_stream(host: str, port: int) -> str:
    """The [server] address as ListenStream= spells it: an IP address and a port, or a port alone (every
    address, as host "" binds)."""
    if host == "":
        return str(port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InstallStepError(
            f"[server] host {host!r} is not an IP address: the socket unit listens on addresses only"
        ) from None
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def socket_text(prefix: Path, listen: str, allow_ips: tuple[str, ...]) -> str:
    """The socket unit: systemd keeps the gateway's address open while the service restarts."""
    return f"""[Unit]
Description=Listening socket of the air-gapped LLM appliance in {prefix}
Documentation=file://{prefix}/current/bundle/installer

[Socket]
# The [server] address of {prefix}/data/settings.toml when the installer wrote this unit (install again
# after changing it). The socket stays open while {UNIT_NAME} stops and starts for an upgrade or a
# rollback: connections in between wait in the backlog, none is refused.
ListenStream={listen}
Backlog={BACKLOG}
NoDelay=yes
# The service's IP wall covers the sockets it opens itself; the ones systemd opens for it follow this
# unit's, so the same wall stands here.
IPAddressDeny=any
IPAddressAllow={_allowed(allow_ips)}

[Install]
WantedBy=sockets.target
"""


def unit_text(
    prefix: Path, root: Path, allow_ips: tuple[str, ...], gpu: bool, user: str = SERVICE_USER
) -> str:
    """The unit for the version whose folder is `root` (PREFIX/current in the installed unit)."""
    allowed = _allowed(allow_ips)
    # A GPU needs its device nodes; a CPU appliance gets a private /dev with none at all.
    devices = "".join(
        f"DeviceAllow=char-{group} rw\n"
        for group in ("nvidia-frontend", "nvidia-uvm", "nvidia-caps", "nvidiactl")
    )
    devices = f"PrivateDevices=no\nDevicePolicy=closed\n{devices}" if gpu else ""
    devices = devices or "PrivateDevices=yes\n"
    data = prefix / "data"
    return f"""[Unit]
Description=Air-gapped OpenAI-compatible LLM appliance
Documentation=file://{root}/bundle/installer
# Served on the socket systemd holds ({SOCKET_NAME}, fd 3): it stays open across restarts.
Requires={SOCKET_NAME}
After=local-fs.target {SOCKET_NAME}

[Service]
Type=simple
# Its own unprivileged system user, created by the installer. Not DynamicUser=: the data lives in the
# prefix, outside /var/lib, and keeps one owner across restarts and versions. Code, weights and the
# installer are root's: the service reads them and cannot change them.
User={user}
Group={user}
Environment=APPLIANCE_HOME={data}
# Not the data directory: `python -m` puts the working directory first on sys.path, and the service must
# not be able to plant code that its next start imports.
WorkingDirectory=/
# A connection while an upgrade or rollback changes the data or `current` activates the service through
# the socket: it waits for the installer's run/data.lock (root's, hence `+`), so it never runs an older
# version on data being migrated, and starts the version that is current once the installer is done.
ExecStartPre=+/bin/sh -c 'test ! -d {prefix}/run || exec {FLOCK} --shared {prefix}/run/data.lock true'
TimeoutStartSec=infinity
ExecStart={" ".join(serve_argv(root))}
Restart=on-failure
RestartSec=2
UMask=0077
# A crash never writes a core: the worker's memory holds decrypted weights.
LimitCORE=0
# Workers lock the decrypted weights in RAM so they never reach swap (engines/llamacpp/memlock.py); an
# unprivileged service needs the limit raised for that, else each worker warns and serves unlocked.
LimitMEMLOCK=infinity
NoNewPrivileges=yes
ProtectSystem=strict
# The only writable path: the one data directory (registry, store, sockets). Versions, venvs, weights
# and installer.pyz stay read-only even if file modes were wrong.
ReadWritePaths={data}
# The resolver stub, nscd and D-Bus (resolve1) answer name lookups for anyone who asks: DNS is an
# exfiltration path for code that bypasses the in-process guard. `-`: a host without them is fine.
# (/var/run is a link to /run on every systemd host, so /run covers /var/run/dbus.)
InaccessiblePaths=-/run/systemd/resolve -/run/nscd -/run/dbus
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
RemoveIPC=yes
# Other users' processes are invisible. Not ProcSubset=pid: hardware detection reads /proc/cpuinfo and
# /proc/meminfo.
ProtectProc=invisible
{devices}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# Workers enter a private network namespace (appliance/egress.py); with no capabilities that takes a user
# namespace mapping the service's own uid. Every other kind of namespace stays forbidden. (Not
# PrivateUsers=: untested with the GPU device nodes' groups.)
RestrictNamespaces=user net
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# What ordinary services need (unshare, memfd_create, mlock included); a call outside it fails with EPERM
# rather than killing the process. Not MemoryDenyWriteExecute=: ctypes callbacks, CUDA and Triton JIT
# need writable-executable memory.
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
# The wall behind the in-process egress tripwire: no packet sockets, and IP only to loopback, the client
# networks and enclave peers given with --allow-ip; the kernel drops everything else. `appliance doctor`
# warns when an [egress] allow network is missing here (the wall would drop what the tripwire allows).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
IPAddressDeny=any
IPAddressAllow={allowed}

[Install]
WantedBy=multi-user.target
"""


def ensure_service_user(name: str, report: Report) -> tuple[int, int]:
    """The service user's uid and gid, creating a system user without a login when it is missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home = "/nonexistent"
        argv = [str(USERADD), "--system", "--user-group", "--no-create-home", "--home-dir", home]
        run_step("create the service user", [*argv, "--shell", "/usr/sbin/nologin", name], clean_env())
        entry = pwd.getpwnam(name)
        report(f"service user {name} created (uid {entry.pw_uid})")
    if entry.pw_uid == 0 or name == "nobody":
        # nobody's files would belong to every other service running as nobody (systemd refuses it too).
        raise InstallStepError(f"the service user must be its own unprivileged user, not {name}")
    return entry.pw_uid, entry.pw_gid


def check_unit(path: Path) -> str:
    """Run `systemd-analyze verify` on a unit file if the tool exists; return what was done."""
    tool = shutil.which("systemd-analyze", path="/usr/bin:/bin")
    if tool is None:
        return "systemd-analyze not present; unit not checked"
    done = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    # Lines about other units on the host are its business. Any line about ours fails the install, even a
    # warning: "Unknown key ..., ignoring" would mean a hardening directive silently does nothing.
    ours = [line for line in done.stderr.splitlines() if path.name in line]
    if ours:
        raise InstallStepError(f"systemd-analyze rejects the unit: {ours[0]}")
    return "checked with systemd-analyze verify"


def check_units(folder: Path, service: str, socket: str) -> str:
    """Write the two units into `folder` under their own names (the service requires the socket by name)
    and check both; the folder is removed after."""
    folder.mkdir()
    try:
        (folder / SOCKET_NAME).write_text(socket)
        (folder / UNIT_NAME).write_text(service)
        check_unit(folder / SOCKET_NAME)
        return check_unit(folder / UNIT_NAME)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
