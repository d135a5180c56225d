"""`appliance doctor`: the egress posture of this appliance (and who encrypts its gateway), checked rather
than assumed.

Each check looks at the real thing: the guard is probed with a UDP "connect" to TEST-NET (which sends no
packet even without a guard), the llama.cpp worker is started as the supervisor starts it (its environment,
its namespace wrapper) in its diagnostic mode, the installed unit file is parsed, running workers' network
namespaces are read from /proc. The admin API serves the same report from inside the running gateway.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from cryptography import x509

from appliance.egress import allow_list, guard_refusal, network_namespace_prefix, worker_self_test_argv
from appliance.engines.kind import worker_environment
from appliance.errors import SettingsError
from appliance.settings import Settings, home_from_environment, load_settings
from appliance.tls import check_bind, leaf_certificate, server_context
from installer.egress import OFFLINE_ENVIRONMENT, PROXY_VARIABLES, AllowList

DEFAULT_UNIT = Path("/etc/systemd/system/appliance.service")
WORKER_PROBE_TIMEOUT_S = 60.0
WORKER_MODULE = "appliance.engines.llamacpp"
# The families the unit may allow: local sockets, and IP for the clients and the allow-listed enclave.
ALLOWED_FAMILIES = frozenset({"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"})
CERTIFICATE_WARNING = datetime.timedelta(days=30)
"""A gateway certificate that expires sooner is worth a warning: clients refuse it the day after."""


class Check(msgspec.Struct, frozen=True):
    """One finding: `level` is ok, warn (worth knowing, not wrong) or fail (exit status 1)."""

    name: str
    level: str
    detail: str


class Posture(msgspec.Struct, frozen=True):
    """The whole report: every check, the allow-list, and whether anything failed."""

    ok: bool
    allow: list[str]
    checks: list[Check]


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _fail(name: str, detail: str) -> Check:
    return Check(name, "fail", detail)


def guard_check() -> Check:
    """Is this process's tripwire installed? A refused probe says yes."""
    refused = guard_refusal()
    if refused is None:
        return _fail("guard", "no egress guard in this process: a connection to TEST-NET was not refused")
    return _ok("guard", f"active in this process (pid {os.getpid()}): {refused}")


def proxy_checks(environment: dict[str, str] | None = None) -> list[Check]:
    """No proxy variables here, and a worker's environment is offline and proxy-free."""
    here = sorted(
        k for k in (os.environ if environment is None else environment) if k.lower() in PROXY_VARIABLES
    )
    child = worker_environment(environment)
    leaked = sorted(k for k in child if k.lower() in PROXY_VARIABLES)
    missing = sorted(k for k, v in OFFLINE_ENVIRONMENT.items() if child.get(k) != v)
    return [
        _fail("proxy variables", f"set in this process: {', '.join(here)}")
        if here
        else _ok("proxy variables", "none in this process"),
        _fail("child environment", f"proxies {leaked}, offline variables missing {missing}")
        if leaked or missing
        else _ok("child environment", f"no proxies; {' '.join(f'{k}=1' for k in OFFLINE_ENVIRONMENT)}"),
    ]


def parse_unit(text: str) -> dict[str, list[str]]:
    """The `[Service]` section of a unit file: each key with its values in order (keys may repeat)."""
    section, found = "", dict[str, list[str]]()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _enclave_check(allowed: list[str], allow: AllowList) -> Check:
    """Every `[egress] allow` network must also pass the unit's IPAddressAllow, or the wall drops it."""
    walls = []
    for entry in allowed:
        with contextlib.suppress(ValueError):  # keywords: localhost, link-local, multicast
            walls.append(ipaddress.ip_network(entry, strict=False))
    missing = [
        str(n)
        for n in allow.networks
        if not any(n.version == w.version and n.subnet_of(w) for w in walls)  # type: ignore[arg-type]
    ]
    if missing:
        return Check(
            "unit enclave", "warn", f"[egress] allow networks not in IPAddressAllow: {', '.join(missing)}"
        )
    return _ok("unit enclave", "every [egress] allow network passes IPAddressAllow")


def unit_checks(path: Path, allow: AllowList | None = None) -> list[Check]:
    """The network walls of the installed systemd unit; a missing unit is a warning (development)."""
    try:
        service = parse_unit(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [
            Check("unit", "warn", f"{path}: no unit installed (development, or installed without --systemd)")
        ]
    except OSError as error:
        return [_fail("unit", f"{path}: cannot read ({error.strerror})")]
    deny = " ".join(service.get("IPAddressDeny", [])).split()
    allowed = " ".join(service.get("IPAddressAllow", [])).split()
    families = " ".join(service.get("RestrictAddressFamilies", [])).split()
    proxies = [v for v in service.get("Environment", []) if v.split("=", 1)[0].lower() in PROXY_VARIABLES]
    return [
        _ok("unit IPAddressDeny", "any")
        if "any" in deny
        else _fail("unit IPAddressDeny", f"{path}: not `any`"),
        _ok("unit IPAddressAllow", " ".join(allowed))
        if allowed
        else _fail("unit IPAddressAllow", f"{path}: missing (not even localhost)"),
        _ok("unit RestrictAddressFamilies", " ".join(families))
        if families and not families[0].startswith("~") and set(families) <= ALLOWED_FAMILIES
        else _fail("unit RestrictAddressFamilies", f"{path}: {' '.join(families) or 'missing'}"),
        _fail("unit proxies", f"{path}: sets {proxies}") if proxies else _ok("unit proxies", "none set"),
        _enclave_check(allowed, allow or AllowList()),
    ]


def worker_probe_check() -> Check:
    """Start the worker as the supervisor would, in its self-test mode: guard refused, namespace private?"""
    argv = worker_self_test_argv()
    try:
        done = subprocess.run(
            argv, env=worker_environment(), capture_output=True, text=True, timeout=WORKER_PROBE_TIMEOUT_S
        )
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        return _fail("worker guard", f"the worker self-test did not report: {error}")
    if report.get("refused") is None:
        return _fail("worker guard", "a worker's connection to TEST-NET was not refused")
    private = report.get("network_namespace") != os.readlink("/proc/self/ns/net")
    where = "in a private network namespace" if private else "in the host's network namespace"
    blocked = next((line for line in done.stderr.splitlines() if line.startswith("egress.blocked")), "")
    return _ok("worker guard", f"refused {where}; the worker logged: {blocked or report['refused']}")


def namespace_checks(settings: Settings) -> list[Check]:
    """Whether workers can get a private network namespace here, and whether running ones have one."""
    prefix = network_namespace_prefix()
    checks = [
        _ok("worker namespace", f"workers start under `{' '.join(prefix[:-1])}`")
        if prefix
        else Check("worker namespace", "warn", "the OS refuses network namespaces; workers share the host's")
    ]
    ours = os.readlink("/proc/self/ns/net")
    socket_dir = str(settings.run_dir) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if WORKER_MODULE.encode() not in argv or not any(a.startswith(socket_dir.encode()) for a in argv):
                continue
            namespace = os.readlink(proc / "ns" / "net")
        except OSError:
            continue  # gone, or not ours to read
        name = f"running worker {proc.name}"
        checks.append(
            _ok(name, f"private network namespace {namespace}")
            if namespace != ours
            else Check(name, "warn" if not prefix else "fail", "shares the host's network namespace")
        )
    return checks


def tls_check(settings: Settings, now: datetime.datetime | None = None) -> Check:
    """Who encrypts the gateway's connections, and whether `appliance serve` would start with it."""
    server, where = settings.server, settings.home / "settings.toml"
    if server.tls == "terminated":
        return Check(
            "gateway tls",
            "warn",
            f"terminated: plain HTTP on {server.host}:{server.port}; only the TLS terminator in front, which "
            "the admin vouches for, may reach it",
        )
    try:
        check_bind(server, server.host, where)
        context = server_context(server, where)
        if context is None:
            return _ok("gateway tls", f"off: plain HTTP on loopback ({server.host}) only")
        leaf = x509.load_pem_x509_certificate(leaf_certificate(server.tls_cert, where).encode())
    except SettingsError as error:
        return _fail("gateway tls", error.message)
    expires = leaf.not_valid_after_utc
    left = expires - (now or datetime.datetime.now(datetime.UTC))
    clients = "client certificates required" if server.tls_client_ca else "no client certificates asked for"
    detail = f"on: TLS 1.2+, {leaf.subject.rfc4514_string()} until {expires:%Y-%m-%d}; {clients}"
    if left <= datetime.timedelta(0):
        return _fail("gateway tls", f"{server.tls_cert}: the certificate expired on {expires:%Y-%m-%d}")
    if left < CERTIFICATE_WARNING:
        return Check("gateway tls", "warn", f"{detail} (expires in {left.days} days: renew it)")
    return _ok("gateway tls", detail)


def egress_posture(settings: Settings, unit: Path = DEFAULT_UNIT) -> Posture:
    """Every egress check for `settings`' appliance, seen from this process."""
    allowed = allow_list(settings)
    checks = [
        guard_check(),
        *proxy_checks(),
        worker_probe_check(),
        *namespace_checks(settings),
        *unit_checks(unit, allowed),
        tls_check(settings),
    ]
    allow = allowed.entries()
    checks.append(_ok("allow list", ", ".join(allow) or "empty: loopback and unix sockets only"))
    return Posture(ok=all(c.level != "fail" for c in checks), allow=allow, checks=checks)


def format_posture(posture: Posture) -> str:
    """The report as aligned text, one check a line."""
    lines = [f"{c.level.upper():4}  {c.name:28}  {c.detail}" for c in posture.checks]
    lines.append("egress posture: " + ("ok" if posture.ok else "PROBLEMS FOUND"))
    return "\n".join(lines)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    unit: Annotated[Path, typer.Option(help="the installed systemd unit to inspect")] = DEFAULT_UNIT,
) -> None:
    """Report the egress posture: guard, worker isolation, unit hardening, allow-list; exit 1 if wrong."""
    posture = egress_posture(load_settings(home_from_environment()), unit)
    typer.echo(
        msgspec.json.format(msgspec.json.encode(posture)).decode() if as_json else format_posture(posture)
    )
    if not posture.ok:
        raise typer.Exit(1)
