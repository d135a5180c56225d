"""`appliance store unlock|lock|status`: the running gateway's store, through its admin API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
import typer

from api.cli_store import PASSPHRASE_VARIABLE
from appliance.errors import ApplianceError
from appliance.settings import home_from_environment, load_settings

ADMIN_KEY_VARIABLE = "APPLIANCE_ADMIN_KEY"
UNLOCK_MARGIN_S = 30.0
"""Unlocking waits for the encrypted workers to load: their start-up timeout, plus this."""

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


def _call(
    key_file: Path | None, method: str, path: str, body: dict[str, str] | None = None
) -> dict[str, Any]:
    """One admin-API call to this home's gateway; its OpenAI error, or no answer, becomes one CLI line."""
    settings = load_settings(home_from_environment())
    url = settings.server.url
    timeout = settings.workers.startup_timeout_s + UNLOCK_MARGIN_S
    headers = {"Authorization": f"Bearer {_admin_key(key_file)}"}
    try:
        answer = httpx.request(method, url + path, json=body, headers=headers, timeout=timeout)
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


def _describe(status: dict[str, Any]) -> str:
    state = "locked" if status["locked"] else "unlocked"
    mode = "a passphrase" if status["mode"] == "passphrase" else "a key file"
    return f"store {state} (key from {mode}; {len(status['encrypted_models'])} encrypted model(s) served)"


def store_unlock(key_file: KeyFileOption = None) -> None:
    """Unlock the running appliance's store (passphrase from APPLIANCE_STORE_PASSPHRASE or a prompt)."""
    passphrase = os.environ.get(PASSPHRASE_VARIABLE)
    if passphrase is None:
        passphrase = typer.prompt("store passphrase", hide_input=True, err=True)
    done = _call(key_file, "POST", "/admin/store/unlock", {"passphrase": passphrase})
    typer.echo(f"unlocked; started {done['started']} encrypted worker(s)")


def store_lock(key_file: KeyFileOption = None) -> None:
    """Lock the running appliance's store: stop the encrypted workers and forget the key."""
    done = _call(key_file, "POST", "/admin/store/lock")
    typer.echo(f"locked; stopped {done['stopped']} encrypted worker(s)")


def store_status(key_file: KeyFileOption = None) -> None:
    """Whether the running appliance's store is locked, and where its key comes from."""
    typer.echo(_describe(_call(key_file, "GET", "/admin/store/status")))


def register_unlock_commands(store_app: typer.Typer) -> None:
    """Add unlock, lock and status to `appliance store`."""
    store_app.command("unlock")(store_unlock)
    store_app.command("lock")(store_lock)
    store_app.command("status")(store_status)
