"""TLS of the gateway: the rule for where plain HTTP may listen, the server's context built from `[server]`,
and the context the appliance's own clients (console, CLI) reach it with.

Everything here fails with one SettingsError line that names the setting and the file, before a worker
starts: a certificate that does not load must not show up later as a handshake error on every request.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import SettingsError

if TYPE_CHECKING:
    from appliance.settings import ServerSettings

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class _EncryptedKeyError(Exception):
    """The private key asks for a password: the service starts unattended, so there is none to give."""


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps every connection on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().lower().removesuffix(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]").split("%", 1)[0]).is_loopback
    except ValueError:
        return (
            False  # a name other than localhost may resolve to anything, and "" or 0.0.0.0 is every address
        )


def check_bind(server: ServerSettings, host: str, where: Path) -> None:
    """Refuse plain HTTP on an address beyond loopback unless `tls` says a terminator encrypts it."""
    if server.tls == "off" and not is_loopback(host):
        raise SettingsError(
            f"{where}: refusing plain HTTP on {host or 'every address'} (keys and prompts would cross the "
            f'network in clear text): set `server.tls = "on"` with tls_cert and tls_key, or '
            f'`server.tls = "terminated"` if a TLS terminator is in front'
        )


def _readable(path: str, key: str, where: Path) -> str:
    """`path` if it is a regular file this process can read, else SettingsError naming the setting."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: a FIFO would block the start
            raise SettingsError(f"{where}: server.{key} {path}: not a regular file")
        with open(path, "rb"):
            pass
    except OSError as error:
        raise SettingsError(f"{where}: server.{key} {path}: cannot read ({error.strerror})") from None
    return path


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error.strerror or error).lower().replace("_", " ")


def _no_password() -> bytes:
    raise _EncryptedKeyError


def server_context(server: ServerSettings, where: Path) -> ssl.SSLContext | None:
    """The gateway's TLS context (None unless tls = "on"): certificate and key loaded and matched, TLS 1.2
    or later, client certificates required when tls_client_ca is set; SettingsError otherwise."""
    if server.tls != "on":
        return None
    cert = _readable(server.tls_cert, "tls_cert", where)
    key = _readable(server.tls_key, "tls_key", where)
    try:
        ssl.create_default_context(cafile=cert)  # parses every certificate, so a bad one is named as such
    except ssl.SSLError as error:
        raise SettingsError(
            f"{where}: server.tls_cert {cert}: no PEM certificate ({_reason(error)})"
        ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKeyError:
        raise SettingsError(
            f"{where}: server.tls_key {key}: encrypted (the service starts unattended: store it "
            "unencrypted, readable by the service only)"
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise SettingsError(
                f"{where}: server.tls_key {key} does not match server.tls_cert {cert}"
            ) from None
        raise SettingsError(f"{where}: server.tls_key {key}: no PEM private key ({_reason(error)})") from None
    if server.tls_client_ca:
        ca = _readable(server.tls_client_ca, "tls_client_ca", where)
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as error:
            raise SettingsError(
                f"{where}: server.tls_client_ca {ca}: no PEM certificate ({_reason(error)})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def leaf_certificate(path: str, where: Path) -> str:
    """The first certificate of a PEM file (the server's own, before any intermediates), as PEM."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as error:
        raise SettingsError(f"{where}: server.tls_cert {path}: cannot read ({error.strerror})") from None
    start = text.find(_PEM_CERTIFICATE)
    end = text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise SettingsError(f"{where}: server.tls_cert {path}: no PEM certificate")
    return text[start : end + len("-----END CERTIFICATE-----")] + "\n"


def client_context(
    server: ServerSettings,
    where: Path,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> ssl.SSLContext | None:
    """How the console and the CLI verify the gateway (None: the system's CAs, or plain HTTP).

    With `ca` (a CA the admin trusts): a certificate it signed, for the host name in the URL. Without, when
    this home serves TLS: the gateway's own certificate from `server.tls_cert`, pinned: it alone is trusted,
    so no other certificate passes, whatever name it carries, and the name is not checked (the CLI connects
    to an address, often 127.0.0.1, that a LAN certificate does not name). `cert` and `key`: the client
    certificate that mutual TLS asks for.
    """
    if ca is None and server.tls != "on" and cert is None:
        return None
    try:
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
        elif server.tls == "on":
            context = ssl.create_default_context(cadata=leaf_certificate(server.tls_cert, where))
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
            context.check_hostname = False
        else:
            context = ssl.create_default_context()
        context.minimum_version = MINIMUM_VERSION
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        what = _reason(error) if isinstance(error, ssl.SSLError) else f"{error.filename}: {error.strerror}"
        raise SettingsError(f"cannot set up TLS to the gateway: {what}") from None
    if server.tls_client_ca and cert is None:
        raise SettingsError(
            f"{where}: the gateway asks for client certificates (server.tls_client_ca): "
            "give one (APPLIANCE_TLS_CLIENT_CERT and APPLIANCE_TLS_CLIENT_KEY)"
        )
    return context
