"""TLS on the gateway (issue 17 item 9): beyond loopback, keys, prompts and the store passphrase never cross
the network in clear text. A real `appliance serve` on every address with its own certificate and mutual TLS
answers the official client over HTTPS only, to clients with a certificate its CA signed; the appliance's own
clients (CLI and console) reach it too; and plain HTTP beyond loopback is refused at start unless the admin
states that a TLS terminator is in front."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.cli_admin import gateway_tls
from api.doctor import tls_check
from appliance.errors import SettingsError
from appliance.settings import ServerSettings, Settings, load_settings
from appliance.tls import is_loopback
from tests.e2e.server import APPLIANCE, RunningAppliance, free_port, start_appliance
from tui.client import AdminClient

EVERY_ADDRESS = "0.0.0.0"  # the point: serving beyond loopback
VALID_DAYS = 90


@dataclass(frozen=True)
class Pki:
    """A CA, the server's certificate for 127.0.0.1 and localhost, and client certificates: one from the CA,
    one from a CA the gateway does not trust."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    encoded = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(encoded)
    path.chmod(0o600)
    return key


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for `key`: a CA when `usage` is None (self-signed without `issuer`), else a leaf."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer_key if issuer else key).public_key()),
            critical=False,
        )
    )
    if usage is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(folder: Path) -> Pki:
    """Every file of the test's PKI, generated now (nothing checked in that could expire or leak)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _write_key(folder / "ca.key")
    ca = _certificate("appliance test CA", ca_key, None, ca_key)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _certificate("someone else's CA", rogue_ca_key, None, rogue_ca_key)
    leaves = {}
    for name, issuer, issuer_key, usage in (
        ("server", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH),
        ("rogue", rogue_ca, rogue_ca_key, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = _write_key(folder / f"{name}.key")
        leaves[name] = _pem(folder / f"{name}.pem", _certificate(name, key, issuer, issuer_key, usage=usage))
    return Pki(
        ca=_pem(folder / "ca.pem", ca),
        server_cert=leaves["server"],
        server_key=folder / "server.key",
        client_cert=leaves["client"],
        client_key=folder / "client.key",
        rogue_cert=leaves["rogue"],
        rogue_key=folder / "rogue.key",
    )


def client_tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """What an on-site app would use: the appliance's CA, and a client certificate if given."""
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def tls_lines(pki: Pki) -> str:
    """The `[server]` lines of a gateway on every address with the test PKI's certificate and mutual TLS."""
    lines = f'host = "{EVERY_ADDRESS}"\ntls = "on"\n'
    lines += f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
    return lines + f'tls_client_ca = "{pki.ca}"\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The module's certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def appliance(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path, pki: Pki
) -> Iterator[RunningAppliance]:
    """One appliance on 0.0.0.0 with TLS and mutual TLS; the harness shows the client certificate."""
    running = start_appliance(
        tmp_path_factory.mktemp("tls") / "home",
        model_path,
        "[limits]\nmax_tokens = 8\n",
        server=tls_lines(pki),
        verify=client_tls(pki, pki.client_cert, pki.client_key),
    )
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _openai(appliance: RunningAppliance, http: httpx2.Client, base_url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url or appliance.base_url}/v1",
        api_key=appliance.user_key,
        max_retries=0,
        timeout=60,
        http_client=http,
    )


def _chat(client: openai.OpenAI) -> str:
    answer = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
    )
    return answer.choices[0].message.content or ""


def test_the_official_client_gets_a_chat_completion_over_https(appliance: RunningAppliance, pki: Pki) -> None:
    """The CA verifies the server (host name 127.0.0.1 checked), the client certificate passes mutual TLS."""
    assert appliance.base_url.startswith("https://")
    with httpx2.Client(verify=client_tls(pki, pki.client_cert, pki.client_key)) as http:
        assert _chat(_openai(appliance, http))
        streamed = _openai(appliance, http).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
        assert [chunk.id for chunk in streamed]


def test_plain_http_to_the_tls_port_gets_no_answer(appliance: RunningAppliance, pki: Pki) -> None:
    """A client that speaks plain HTTP to the port gets no HTTP answer at all: a misconfigured app fails at
    once instead of working in clear text."""
    plain = f"http://127.0.0.1:{appliance.port}"
    with httpx2.Client() as http, pytest.raises(openai.APIConnectionError):
        _chat(_openai(appliance, http, plain))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/health/live", timeout=10)
    assert appliance.process.poll() is None


@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(
    appliance: RunningAppliance, pki: Pki, who: str
) -> None:
    """The handshake fails before any HTTP: the API key alone does not get in."""
    context = client_tls(pki) if who.startswith("no") else client_tls(pki, pki.rogue_cert, pki.rogue_key)
    with httpx2.Client(verify=context) as http, pytest.raises(openai.APIConnectionError):
        _chat(_openai(appliance, http))
    with httpx2.Client(verify=client_tls(pki, pki.client_cert, pki.client_key)) as http:
        assert _chat(_openai(appliance, http))  # and the gateway serves on


def test_a_client_that_does_not_trust_the_ca_refuses_the_gateway(appliance: RunningAppliance) -> None:
    """Verification is on the client's side too: the system CAs do not know the appliance's certificate."""
    with httpx2.Client() as http, pytest.raises(openai.APIConnectionError):
        _chat(_openai(appliance, http))


def _environment(appliance: RunningAppliance, **extra: str) -> dict[str, str]:
    return (
        os.environ
        | {"APPLIANCE_HOME": str(appliance.home), "APPLIANCE_ADMIN_KEY": appliance.admin_key}
        | extra
    )


def test_the_cli_reaches_the_gateway_over_tls_pinning_its_certificate(
    appliance: RunningAppliance, pki: Pki
) -> None:
    """`appliance store status` (an admin-API call) trusts [server] tls_cert itself; mTLS needs a cert."""
    with_cert = _environment(
        appliance,
        APPLIANCE_TLS_CLIENT_CERT=str(pki.client_cert),
        APPLIANCE_TLS_CLIENT_KEY=str(pki.client_key),
    )
    done = subprocess.run(
        [APPLIANCE, "store", "status"], env=with_cert, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    without = subprocess.run(
        [APPLIANCE, "store", "status"],
        env=_environment(appliance),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert without.returncode == 1
    assert without.stderr.count("\n") == 1, without.stderr
    assert "tls_client_ca" in without.stderr
    assert "APPLIANCE_TLS_CLIENT_CERT" in without.stderr


def test_the_console_client_reaches_the_gateway_over_tls(appliance: RunningAppliance, pki: Pki) -> None:
    """The console's admin client, with the context `appliance tui` gives it: pinned, or by the admin's CA."""
    settings = load_settings(appliance.home)
    assert settings.server.url == f"https://127.0.0.1:{appliance.port}"

    async def keys(verify: ssl.SSLContext | bool) -> int:
        client = AdminClient(settings.server.url, appliance.admin_key, verify=verify)
        try:
            return len(await client.keys())
        finally:
            await client.aclose()

    pinned = gateway_tls(settings, cert=pki.client_cert, key=pki.client_key)
    by_ca = gateway_tls(settings, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert asyncio.run(keys(pinned)) >= 2
    assert asyncio.run(keys(by_ca)) >= 2


def test_appliance_tui_reaches_the_gateway_over_tls(appliance: RunningAppliance, pki: Pki) -> None:
    """`appliance tui` checks its key over HTTPS before drawing: a user key is refused by the admin API (so
    the TLS connection worked), with the client certificate from its options or the environment."""
    options = ("--tls-client-cert", str(pki.client_cert), "--tls-client-key", str(pki.client_key))
    environment = _environment(appliance, APPLIANCE_ADMIN_KEY=appliance.user_key)
    for args, extra in (
        (options, {}),
        (("--tls-ca", str(pki.ca), "--url", f"https://localhost:{appliance.port}", *options), {}),
        (
            (),
            {
                "APPLIANCE_TLS_CLIENT_CERT": str(pki.client_cert),
                "APPLIANCE_TLS_CLIENT_KEY": str(pki.client_key),
            },
        ),
    ):
        done = subprocess.run(
            [APPLIANCE, "tui", *args],
            env=environment | extra,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip() == "error: the gateway refused the key: This route needs an admin key."


def _serve_once(home: Path, server_lines: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`appliance serve` on a fresh home that is expected to refuse to start."""
    home.mkdir(parents=True)
    (home / "settings.toml").write_text(f"[server]\n{server_lines}port = {free_port()}\n")
    return subprocess.run(
        [APPLIANCE, "serve", *args],
        env=os.environ | {"APPLIANCE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("server_lines", "args"),
    [
        (f'host = "{EVERY_ADDRESS}"\n', ()),
        ('host = "192.0.2.10"\n', ()),
        ('host = "::"\n', ()),
        ('host = "127.0.0.1"\n', ("--host", EVERY_ADDRESS)),
    ],
    ids=["0.0.0.0", "a LAN address", "every IPv6 address", "--host 0.0.0.0"],
)
def test_plain_http_beyond_loopback_is_refused_at_start(
    tmp_path: Path, server_lines: str, args: tuple[str, ...]
) -> None:
    """One line naming the setting, exit status 1, before anything listens or any worker starts."""
    _refused(_serve_once(tmp_path / "home", server_lines, *args), "refusing plain HTTP", "server.tls")


def test_bad_tls_files_are_refused_at_start_in_one_line(tmp_path: Path, pki: Pki) -> None:
    """Missing, mismatched or wrong files: one line naming the setting and the file, exit status 1."""
    every = f'host = "{EVERY_ADDRESS}"\ntls = "on"\n'
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    encrypted.write_bytes(key.private_bytes(encoding, pkcs8, serialization.BestAvailableEncryption(b"pw")))
    cases = [
        (f'tls_cert = "{missing}"\ntls_key = "{pki.server_key}"\n', ("server.tls_cert", "cannot read")),
        (f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.client_key}"\n', ("does not match",)),
        (f'tls_cert = "{pki.server_key}"\ntls_key = "{pki.server_key}"\n', ("server.tls_cert", "no PEM")),
        (f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_cert}"\n', ("server.tls_key",)),
        (f'tls_cert = "{pki.server_cert}"\ntls_key = "{encrypted}"\n', ("server.tls_key", "encrypted")),
        (
            f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\ntls_client_ca = "{missing}"\n',
            ("server.tls_client_ca", "cannot read"),
        ),
        ('tls_cert = "relative.pem"\ntls_key = "key.pem"\n', ("not an absolute path",)),
        ("", ("needs tls_cert and tls_key",)),
    ]
    for number, (lines, words) in enumerate(cases):
        _refused(_serve_once(tmp_path / f"home{number}", every + lines), *words)


def test_terminated_serves_plain_http_beyond_loopback(tmp_path: Path) -> None:
    """`tls = "terminated"`: the admin states a terminator is in front; plain HTTP on 0.0.0.0 starts."""
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "{EVERY_ADDRESS}"\ntls = "terminated"\nport = {port}\n'
    )
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [APPLIANCE, "serve"], env=os.environ | {"APPLIANCE_HOME": str(home)}, stdout=log, stderr=log
        )
    running = RunningAppliance(home, port, "", "", process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert running.process.poll() is None, running.log
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "appliance serve did not start"
            time.sleep(0.2)
    finally:
        assert running.stop() in (0, 130)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        (EVERY_ADDRESS, False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("appliance.lan", False),
        ("localhost.example.com", False),
    ],
)
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    """127.0.0.0/8, ::1 and localhost stay on the machine; every other name or address may not."""
    assert is_loopback(host) is loopback


def test_local_clients_connect_to_loopback_over_https(tmp_path: Path, pki: Pki) -> None:
    """Serving on every address, the CLI and the console use this box's loopback and https."""
    server = ServerSettings(
        host=EVERY_ADDRESS, port=8443, tls="on", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)
    )
    assert server.url == "https://127.0.0.1:8443"
    assert ServerSettings(host="::", tls="terminated").url == "http://[::1]:8080"
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.toml").write_text('[server]\ntls = "on"\n')
    with pytest.raises(SettingsError, match="needs tls_cert and tls_key"):
        load_settings(home)


def _settings(tmp_path: Path, server_lines: str) -> Settings:
    home = tmp_path / "doctor"
    home.mkdir(exist_ok=True)
    (home / "settings.toml").write_text(f"[server]\n{server_lines}")
    return load_settings(home)


def test_doctor_reports_who_encrypts_the_gateway(tmp_path: Path, pki: Pki) -> None:
    """`appliance doctor`: loopback plain is ok, beyond loopback plain fails as serve would, terminated is a
    warning, TLS names the certificate, its expiry and mutual TLS, and warns before it expires."""
    assert tls_check(_settings(tmp_path, 'host = "127.0.0.1"\n')).level == "ok"
    refused = tls_check(_settings(tmp_path, f'host = "{EVERY_ADDRESS}"\n'))
    assert (refused.level, "server.tls" in refused.detail) == ("fail", True), refused
    assert tls_check(_settings(tmp_path, f'host = "{EVERY_ADDRESS}"\ntls = "terminated"\n')).level == "warn"
    served = _settings(tmp_path, tls_lines(pki))
    found = tls_check(served)
    assert found.level == "ok", found
    assert "CN=server" in found.detail
    assert "client certificates required" in found.detail
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=VALID_DAYS - 1)
    assert tls_check(served, now=soon).level == "warn"
    assert tls_check(served, now=soon + datetime.timedelta(days=2)).level == "fail"
    mismatched = tls_lines(pki).replace(str(pki.server_key), str(pki.client_key))
    assert tls_check(_settings(tmp_path, mismatched)).level == "fail"
