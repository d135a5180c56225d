"""Where the installed appliance listens, whether it is ready, and the first request to paste.

The address comes from the data's `settings.toml`, read by the installed version's own Python (the host's
python3 may be 3.10, without tomllib; the appliance's venv is 3.11 or later). Readiness is the gateway's own
`GET /health/ready` with the admin key, over loopback: the installer's egress tripwire admits nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from installer.bundled_models import read_model_meta
from installer.errors import InstallStepError, NotReadyError
from installer.state import Prefix
from installer.steps import Report, clean_env, run_step

DEFAULT_READY_TIMEOUT_S = 180.0
POLL_S = 0.5
NOTE_EVERY_S = 10.0
PROBE_TIMEOUT_S = 5.0

_READ_SERVER = """
import json, sys, tomllib
try:
    with open(sys.argv[1], "rb") as stream:
        server = tomllib.load(stream).get("server", {})
except FileNotFoundError:
    server = {}
print(json.dumps(server if isinstance(server, dict) else {}))
"""


@dataclass(frozen=True)
class Endpoint:
    """The gateway's address as the settings give it (defaults as in appliance/settings.py)."""

    host: str = "127.0.0.1"
    port: int = 8080
    tls: str = "off"
    tls_cert: str = ""
    mutual_tls: bool = False

    @property
    def url(self) -> str:
        """The base URL to reach it from this box (all interfaces: its loopback is one of them)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        scheme = "https" if self.tls == "on" else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def checkable(self) -> bool:
        """Whether the installer can ask it: over loopback, and with no client certificate demanded."""
        host = self.url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        return loopback and not self.mutual_tls


def read_endpoint(prefix: Prefix, root: Path | None = None) -> Endpoint:
    """The [server] settings of the data directory, through the Python of the version in `root` (default:
    the current one)."""
    python = str((root or prefix.current_link) / "venv" / "bin" / "python")
    argv = [python, "-I", "-c", _READ_SERVER, str(prefix.data / "settings.toml")]
    try:
        server = json.loads(run_step("read settings.toml", argv, clean_env()))
        endpoint = Endpoint(
            str(server.get("host", "127.0.0.1")),
            int(server.get("port", 8080)),
            str(server.get("tls", "off")),
            str(server.get("tls_cert", "")),
            bool(server.get("tls_client_ca", "")),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise InstallStepError(f"read settings.toml: its [server] table is not usable ({error})") from None
    return endpoint


@dataclass(frozen=True)
class Health:
    """One readiness answer: the HTTP status (None: no answer), the body's `status`, a few words."""

    code: int | None
    state: str | None
    detail: str


def probe(endpoint: Endpoint, key: str) -> Health:
    """One `GET /health/ready` with the admin key."""
    request = urllib.request.Request(  # noqa: S310 - an http(s) URL built from the settings, loopback only
        f"{endpoint.url}/health/ready", headers={"Authorization": f"Bearer {key}"}
    )
    # Our own box's gateway, reached by address: its certificate names the box, not 127.0.0.1.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    # No proxy from the environment: a proxy is a way out, and the tripwire would refuse it anyway.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=PROBE_TIMEOUT_S) as reply:
            return Health(int(reply.status), "ready", "ready")
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read(65536))
        except ValueError:
            body = None
        state = body.get("status") if isinstance(body, dict) else None
        state = state if isinstance(state, str) else None
        if error.code == 401:
            return Health(401, state, "the admin key is refused")
        return Health(error.code, state, f"HTTP {error.code}" + (f", {state}" if state else ""))
    except (OSError, ValueError):  # URLError, a reset, a timeout: not (yet) listening
        return Health(None, None, "not answering")


def wait_ready(
    endpoint: Endpoint,
    key: str,
    timeout_s: float,
    ended: Callable[[], str | None],
    log: str,
    report: Report,
) -> str:
    """Poll readiness until 200 (`ready`) or a locked store (`locked`: only an admin can unlock it); raise
    NotReadyError when `ended()` gives a reason or time runs out."""
    started = time.monotonic()
    last, noted = "", started
    report(f"waiting up to {timeout_s:.0f}s for {endpoint.url}/health/ready")
    while True:
        gone = ended()
        if gone is not None:
            raise NotReadyError(f"{gone} before it was ready", log)
        health = probe(endpoint, key)
        if health.code == 200:
            report(f"ready after {time.monotonic() - started:.0f}s")
            return "ready"
        if health.state == "locked":
            report(
                "the model store is locked: nothing is served until an admin runs `appliance store unlock`"
            )
            return "locked"
        now = time.monotonic()
        if now - started >= timeout_s:
            raise NotReadyError(f"was not ready after {timeout_s:.0f}s ({health.detail})", log)
        if health.detail != last or now - noted >= NOTE_EVERY_S:
            report(f"  not ready yet: {health.detail} ({now - started:.0f}s)")
            last, noted = health.detail, now
        time.sleep(POLL_S)


def default_model(prefix: Prefix) -> str:
    """The name of the bundle's default model (alias `default`), else its first; `default` if none."""
    names: list[tuple[bool, str]] = []
    for meta_file in sorted((prefix.current_link / "bundle" / "models").glob("*/registry.json")):
        meta = read_model_meta(meta_file)
        names.append(("default" not in meta.aliases, meta.name))
    return min(names)[1] if names else "default"


def curl_line(endpoint: Endpoint, key_file: Path, model: str) -> str:
    """A chat completion to paste into a shell, reading the admin key from its file."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello"}]}, separators=(",", ":")
    )
    cacert = (
        f" --cacert {shlex.quote(endpoint.tls_cert)}" if endpoint.tls == "on" and endpoint.tls_cert else ""
    )
    return (
        f"curl -s{cacert} {endpoint.url}/v1/chat/completions "
        f'-H "Authorization: Bearer $(cat {shlex.quote(str(key_file))})" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
