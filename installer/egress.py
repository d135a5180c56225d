"""A tripwire against network egress: an audit hook that refuses connections and name look-ups.

Stdlib only, because the installer installs it before anything from a bundle is trusted; the appliance's
processes use the same hook through `appliance/egress.py`, which adds its settings, error class and audit log.
It is a tripwire, not the wall: code that opens sockets outside Python's `socket` module (native libraries,
uvloop's libuv transports) is not seen here, which is why the systemd unit and network namespaces exist too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
SELF_TEST_TARGET = ("192.0.2.1", 9)
"""TEST-NET-1 (RFC 5737), the discard port: never routed on the internet, so a probe to it harms nobody."""

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
"""Variables that stop ML libraries from phoning home or reaching a model hub."""
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
"""Removed from every child's environment, in either case: a proxy is a way out."""

# Events whose arguments name a peer (socket first, then the address) and events that resolve a name.
_ADDRESS_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
PEER_EVENT = "egress.connect"
"""Raised (with host, port) by code that connects without a Python socket, e.g. appliance/egress.py's loop."""
_NAME_EVENTS = frozenset({"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"})
_REVERSE_EVENTS = frozenset({"socket.gethostbyaddr", "socket.getnameinfo"})
_WATCHED = _ADDRESS_EVENTS | _NAME_EVENTS | _REVERSE_EVENTS | {PEER_EVENT}
# Sockets that cannot leave the machine: a path on the file system, the kernel itself.
_LOCAL_FAMILIES = frozenset(
    getattr(socket, name) for name in ("AF_UNIX", "AF_NETLINK") if hasattr(socket, name)
)

_HOST_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def offline_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` without proxy variables (any case), plus the variables that keep ML libraries offline."""
    environment = {key: value for key, value in base.items() if key.lower() not in PROXY_VARIABLES}
    environment.update(OFFLINE_ENVIRONMENT)
    return environment


@dataclass(frozen=True)
class AllowList:
    """Where a process may connect besides loopback and unix sockets: enclave networks and host names."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """CIDRs or addresses become networks, anything else a host name; raise ValueError on an empty one."""
        networks: list[Network] = []
        names: set[str] = set()
        for entry in entries:
            text = entry.strip()
            if not text:
                raise ValueError("an [egress] allow entry is empty")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text or not _HOST_NAME.fullmatch(text.rstrip(".")):
                    raise ValueError(f"{text!r} is not a CIDR, an address or a host name") from None
                names.add(text.lower().rstrip("."))
        return cls(tuple(networks), frozenset(names))

    def entries(self) -> list[str]:
        """The allow-list as text, networks first."""
        return [str(n) for n in self.networks] + sorted(self.names)

    def allows_address(self, host: str) -> bool:
        """True for a loopback or allow-listed IP literal."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        except ValueError:
            return False
        # 0.0.0.0 and :: as a destination mean this host on Linux: as local as loopback.
        if (
            address.is_loopback
            or address.is_unspecified
            or (address.version == 6 and address.ipv4_mapped is not None and address.ipv4_mapped.is_loopback)
        ):
            return True
        return any(address in network for network in self.networks)

    def allows_name(self, name: str) -> bool:
        """True for a name whose look-up cannot leave the machine, or an allow-listed one."""
        name = name.lower().rstrip(".")
        if not name or name in LOCAL_NAMES or name.endswith(".localhost"):
            return True
        if _is_ip_literal(name):  # resolving a literal does no look-up; the connection is checked itself
            return True
        return name in self.names


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Refusal:
    """One refused attempt: the audit event that carried it and the peer it was for."""

    event: str
    target: str

    @property
    def message(self) -> str:
        """The one-line reason raised to the caller and written to the audit log."""
        return (
            f"network egress blocked: {self.event} to {self.target} (only loopback, unix sockets and "
            "the [egress] allow list are permitted)"
        )


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def check(event: str, args: tuple[Any, ...], allow: AllowList) -> Refusal | None:
    """The refusal for one audit event, or None when the event is allowed (pure: no side effects)."""
    if event not in _WATCHED:
        return None
    if event == PEER_EVENT:
        args = (None, (args[0], args[1]))  # a TCP/UDP peer, as a connect would name it
    if event in _ADDRESS_EVENTS or event == PEER_EVENT:
        sock, address = args[0], args[1]
        if address is None or getattr(sock, "family", None) in _LOCAL_FAMILIES:
            return None  # sendmsg on a connected socket (checked at connect), or a local family
        if not isinstance(address, tuple) or len(address) < 2:
            return Refusal(event, _text(address))
        host, port = _text(address[0]), address[1]
        ok = allow.allows_address(host) if _is_ip_literal(host) else allow.allows_name(host)
        return None if ok else Refusal(event, f"{host}:{port}")
    if event in _NAME_EVENTS:
        name = "" if args[0] is None else _text(args[0])
        return None if allow.allows_name(name) else Refusal(event, name)
    # Reverse look-ups (address to name) go to DNS for anything but loopback.
    target = args[0][0] if isinstance(args[0], tuple) else args[0]
    host = _text(target)
    return None if allow.allows_address(host) else Refusal(event, host)


def install_guard(
    allow: AllowList,
    on_refusal: Callable[[Refusal], None],
    error: Callable[[str], BaseException],
) -> None:
    """Add the audit hook to this process for good: refused attempts call `on_refusal`, then raise `error`.

    Audit hooks cannot be removed, by design: nothing later in the process can switch the tripwire off.
    """

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED:  # every import and open passes here: keep the common path short
            return
        refusal = check(event, args, allow)
        if refusal is None:
            return
        try:
            on_refusal(refusal)
        except Exception as failure:  # noqa: BLE001 - a broken audit sink must not turn a refusal into a pass
            print(f"egress guard: could not record a refusal: {failure!r}", file=sys.stderr, flush=True)
        raise error(refusal.message)

    sys.addaudithook(hook)


def stderr_audit(process: str) -> Callable[[Refusal], None]:
    """An `on_refusal` that writes one line to stderr (workers, installer: their stderr is collected)."""

    def record(refusal: Refusal) -> None:
        print(f"egress.blocked process={process} {refusal.message}", file=sys.stderr, flush=True)

    return record


def self_test(error: type[BaseException]) -> str | None:
    """Try a UDP "connect" to TEST-NET-1: the guard's message if it refused with `error`, else None.

    A UDP connect sends no packet, so even an unguarded process leaks nothing by running this.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(SELF_TEST_TARGET)
    except error as refused:
        return str(refused)
    except OSError:
        return None  # the kernel refused (no route): the guard did not
    finally:
        probe.close()
    return None
