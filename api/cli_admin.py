"""The CLI's way into the running gateway: its admin API with an admin key (commands that must act on the
live appliance, such as unlocking the store or activating a model version, go through here)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import typer

from appliance.errors import ApplianceError
from appliance.settings import Settings, home_from_environment, load_settings
from appliance.tls import client_context

ADMIN_KEY_VARIABLE = "APPLIANCE_ADMIN_KEY"
TLS_CA_VARIABLE = "APPLIANCE_TLS_CA"
"""A CA to verify the gateway's certificate with (host name checked) instead of pinning `server.tls_cert`."""
TLS_CLIENT_CERT_VARIABLE = "APPLIANCE_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_VARIABLE = "APPLIANCE_TLS_CLIENT_KEY"
"""The client certificate and key (PEM) to present when `server.tls_client_ca` asks for one."""

KeyFileOption = Annotated[
    Path | None, typer.Option("--key-file", help=f"file holding an admin key (else ${ADMIN_KEY_VARIABLE})")
]


def _admin_key(key_file: Path | None) -> str:
    """The admin key from `key_file`, else APPLIANCE_ADMIN_KEY, else a hidden prompt."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ApplianceError(f"{key_file}: cannot read the admin key ({error})") from error
    else:
        key = os.environ.get(ADMIN_KEY_VARIABLE) or typer.prompt("admin key", hide_input=True, err=True)
    if not key:
        raise ApplianceError("an admin key is needed (--key-file or APPLIANCE_ADMIN_KEY)")
    return key


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value) if value else None


def gateway_tls(
    settings: Settings, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | bool:
    """What httpx's `verify` gets to reach this home's gateway: its TLS context, or True for plain HTTP.
    Each file not given comes from its APPLIANCE_TLS_* variable."""
    context = client_context(
        settings.server,
        settings.home / "settings.toml",
        ca=ca or _env_path(TLS_CA_VARIABLE),
        cert=cert or _env_path(TLS_CLIENT_CERT_VARIABLE),
        key=key or _env_path(TLS_CLIENT_KEY_VARIABLE),
    )
    return True if context is None else context


def admin_call(
    key_file: Path | None, method: str, path: str, body: dict[str, str] | None, timeout: float
) -> dict[str, Any]:
    """One admin-API call to this home's gateway; its OpenAI error, or no answer, becomes one CLI line."""
    settings = load_settings(home_from_environment())
    url = settings.server.url
    verify = gateway_tls(settings)
    headers = {"Authorization": f"Bearer {_admin_key(key_file)}"}
    try:
        with httpx.Client(verify=verify, timeout=timeout) as http:
            answer = http.request(method, url + path, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise ApplianceError(
            f"cannot reach the gateway at {url} ({error}); is `appliance serve` running?"
        ) from error
    try:
        data: dict[str, Any] = msgspec.json.decode(answer.content, type=dict[str, Any])
    except msgspec.DecodeError as error:
        raise ApplianceError(
            f"{url}{path}: the gateway answered {answer.status_code} without JSON"
        ) from error
    if answer.status_code != 200:
        message = (data.get("error") or {}).get("message", "no reason given")
        raise ApplianceError(f"the gateway refused ({answer.status_code}): {message}")
    return data
