"""A hardened systemd unit for the installed appliance, checked with `systemd-analyze verify` if present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from installer.errors import InstallStepError


def unit_text(prefix: Path, root: Path, allow_ips: tuple[str, ...], gpu: bool) -> str:
    """The unit for the version whose folder is `root` (PREFIX/current in the installed unit)."""
    allowed = " ".join(("localhost", *allow_ips))
    # A GPU needs its device nodes; a CPU appliance gets a private /dev with none at all.
    devices = "".join(
        f"DeviceAllow=char-{group} rw\n"
        for group in ("nvidia-frontend", "nvidia-uvm", "nvidia-caps", "nvidiactl")
    )
    devices = f"PrivateDevices=no\nDevicePolicy=closed\n{devices}" if gpu else ""
    devices = devices or "PrivateDevices=yes\n"
    return f"""[Unit]
Description=Air-gapped OpenAI-compatible LLM appliance
Documentation=file://{root}/bundle/installer
After=local-fs.target

[Service]
Type=simple
Environment=APPLIANCE_HOME={root}/home
ExecStart={root}/venv/bin/appliance serve
Restart=on-failure
RestartSec=2
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={prefix}/versions
ProtectHome=yes
PrivateTmp=yes
{devices}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# Workers enter a private network namespace (appliance/egress.py); with no capabilities that takes a user
# namespace mapping the service's own uid. Every other kind of namespace stays forbidden.
RestrictNamespaces=user net
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
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
