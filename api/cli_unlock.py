"""`appliance store unlock|lock|status`: the running gateway's store, through its admin API."""

from __future__ import annotations

import os
from typing import Any

import typer

from api.cli_admin import KeyFileOption, admin_call
from appliance.cli.store_access import PASSPHRASE_VARIABLE
from appliance.settings import home_from_environment, load_settings

UNLOCK_MARGIN_S = 30.0
"""Unlocking waits for the encrypted workers to load: their start-up timeout, plus this."""


def _call(
    key_file: KeyFileOption, method: str, path: str, body: dict[str, str] | None = None
) -> dict[str, Any]:
    timeout = load_settings(home_from_environment()).workers.startup_timeout_s + UNLOCK_MARGIN_S
    return admin_call(key_file, method, path, body, timeout)


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
