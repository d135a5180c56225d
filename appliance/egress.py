"""The egress tripwire in the appliance's own processes, and the worker's private network namespace.

The hook itself is `installer/egress.py` (stdlib only, so the installer can run it before anything is
installed); this module adds what only the installed appliance has: settings, its error class, the registry's
audit log. One implementation, two callers, nothing copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import EgressBlockedError, SettingsError
from installer.egress import PEER_EVENT, AllowList, Refusal, install_guard, self_test, stderr_audit

if TYPE_CHECKING:
    from appliance.registry.registry import Registry
    from appliance.settings import Settings

EGRESS_SELF_TEST_FLAG = "--egress-self-test"
"""The worker's diagnostic mode: install the guard as on a real start, probe TEST-NET, print, exit."""
AUDIT_ACTION = "egress.blocked"


def allow_list(settings: Settings) -> AllowList:
    """The `[egress] allow` entries as an AllowList, or SettingsError naming the bad entry."""
    try:
        allow = AllowList.parse(settings.egress.allow)
    except ValueError as error:
        raise SettingsError(f"{settings.home / 'settings.toml'}: {error} for key `egress.allow`") from None
    # The gateway's own address (a LAN address when it serves the site): the console and doctor talk to it.
    with contextlib.suppress(ValueError):
        own = ipaddress.ip_network(settings.server.host)
        if not (
            own.network_address.is_loopback or own.network_address.is_unspecified or own in allow.networks
        ):
            return AllowList((*allow.networks, own), allow.names)
    return allow


def registry_audit(database_path: Path, process: str) -> Callable[[Refusal], None]:
    """An `on_refusal` that writes to stderr and appends an `egress.blocked` event to the audit log.

    The registry is opened on the first refusal only, and only if its database exists: a guard must not
    create a database in a home that `appliance init` has not set up yet.
    """
    to_stderr = stderr_audit(process)
    opened: list[Registry] = []

    def record(refusal: Refusal) -> None:
        to_stderr(refusal)
        if not database_path.exists():
            return
        if not opened:
            from appliance.registry.registry import open_registry  # SQLAlchemy only when it is needed

            opened.append(open_registry(database_path))
        opened[0].audit.record(AUDIT_ACTION, outcome="denied", target=refusal.target, detail=refusal.message)

    return record


def install_command_guard(home: Path) -> None:
    """The first thing every `appliance …` command does: the gateway guard for the settings in `home`.

    Unreadable settings get the strictest guard (loopback only); the command then reports the settings
    error itself, so a broken file never leaves a process unguarded and never hides its own message.
    """
    from appliance.settings import load_settings

    try:
        settings = load_settings(home)
        allow = allow_list(settings)
    except SettingsError:
        install_guard(AllowList(), registry_audit(home / "registry.db", "appliance"), EgressBlockedError)
        return
    install_guard(allow, registry_audit(settings.database_path, "appliance"), EgressBlockedError)


def install_worker_guard(process: str) -> None:
    """The tripwire of a worker: it serves on a unix socket and needs no network; refusals go to stderr."""
    install_guard(AllowList(), stderr_audit(process), EgressBlockedError)


def guard_refusal() -> str | None:
    """Probe this process's guard: its refusal message, or None when no guard refused (guard missing)."""
    return self_test(EgressBlockedError)


GUARDED_LOOP = "appliance.egress:new_guarded_loop"
"""uvicorn's `loop=` for our servers (an import string naming a loop factory): uvloop, shown to the guard."""


def new_guarded_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop whose outgoing connections and look-ups pass the audit hook first.

    uvloop connects and resolves in libuv, below Python's `socket` module, so the hook never sees it on its
    own; these overrides announce each peer as an audit event before libuv touches it. The hot path
    (serving requests, reading and writing streams) is untouched. Without uvloop: asyncio's own loop,
    whose sockets the hook sees anyway.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return _guarded_uvloop_class(uvloop.Loop)()


@functools.cache
def _guarded_uvloop_class(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    class GuardedLoop(base):  # type: ignore[valid-type,misc]  # uvloop.Loop, known only at run time
        async def getaddrinfo(self, host: Any, port: Any, **options: Any) -> Any:
            sys.audit("socket.getaddrinfo", host, port, 0, 0, 0)
            return await super().getaddrinfo(host, port, **options)

        async def create_connection(
            self, protocol_factory: Any, host: Any = None, port: Any = None, **options: Any
        ) -> Any:
            if host is not None:
                sys.audit(PEER_EVENT, host, port)
            return await super().create_connection(protocol_factory, host, port, **options)

        async def create_datagram_endpoint(
            self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **options: Any
        ) -> Any:
            if remote_addr is not None and not isinstance(remote_addr, (str, bytes)):
                sys.audit(PEER_EVENT, remote_addr[0], remote_addr[1])
            return await super().create_datagram_endpoint(
                protocol_factory, local_addr, remote_addr, **options
            )

    return GuardedLoop


@functools.cache
def network_namespace_prefix() -> tuple[str, ...]:
    """The argv prefix that starts a command in a private network namespace here, or () where not allowed.

    Root (or CAP_SYS_ADMIN) can create one directly; anyone else only inside a user namespace that maps
    their own uid (so file permissions stay the same). Probed once per process: the answer does not change.
    """
    unshare = shutil.which("unshare", path="/usr/bin:/bin")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--net", "--map-current-user")):
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return (*prefix, "--")
    return ()


def in_network_namespace(argv: list[str]) -> list[str]:
    """`argv` started in a private network namespace (only a down loopback) where the OS allows it.

    `unshare` execs the command, so the pid the supervisor sees is the worker's. A unix socket is a file:
    the gateway still reaches it from its own namespace.
    """
    return [*network_namespace_prefix(), *argv]


PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags at the start of the union


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        flags = _IFREQ.unpack(fcntl.ioctl(probe, SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))


def _unshare_with_loopback() -> None:
    """This process into a new network namespace (inside a new user namespace that maps only our own uid
    and gid where a plain one needs privileges we lack), its loopback brought up."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNET) != 0:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        # A non-dumpable process's /proc/self files belong to root: our uid could not write its maps. This
        # process holds nothing yet (vLLM starts after the exec), so it is dumpable for these three writes.
        dumpable = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        try:
            Path("/proc/self/setgroups").write_text("deny", encoding="ascii")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1", encoding="ascii")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1", encoding="ascii")
        finally:
            libc.prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0)
    # The user namespace's capabilities (CAP_NET_ADMIN over the new network namespace) last until the
    # next exec, which drops them: our uid is not root inside.
    _loopback_up()


def enter_loopback_namespace() -> str:
    """Move this (single-threaded) process into a private network namespace whose only interface is
    loopback, up; '' when done, else why not (the process then stays where it was).

    Unlike the llama.cpp worker's namespace (loopback down: it needs none), this one is for vLLM, whose
    processes talk to each other over TCP on 127.0.0.1 (see appliance/engines/vllm/__main__.py). A child
    tries first, so that a half-made namespace (one whose loopback would not come up) is never entered.
    Inside a user namespace (any uid but root), processes of our uid outside it keep ptrace rights over
    what runs in it (the kernel gives a namespace's owner every capability there), dumpable or not.
    """
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child, which reports by its exit status
        try:
            _unshare_with_loopback()
        except OSError as error:
            os._exit(error.errno or 1)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return f"no private network namespace here ({os.strerror(code) if code > 0 else 'signal'})"
    _unshare_with_loopback()
    return ""


def worker_self_test_argv() -> list[str]:
    """The llama.cpp worker started as the supervisor starts it, in its diagnostic mode."""
    return in_network_namespace([sys.executable, "-m", "appliance.engines.llamacpp", EGRESS_SELF_TEST_FLAG])


def worker_self_test() -> int:
    """The worker's diagnostic mode: print what the guard and the namespace did as JSON; 0 if refused."""
    import json

    refused = guard_refusal()
    print(json.dumps({"refused": refused, "network_namespace": os.readlink("/proc/self/ns/net")}), flush=True)
    return 0 if refused is not None else 1
