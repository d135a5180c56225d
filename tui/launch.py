"""Entry of `appliance tui`: find the admin key, connect to the gateway, run the console."""

from __future__ import annotations

import asyncio
import getpass
import os
import ssl
from pathlib import Path

from tui.app import ConsoleApp
from tui.client import AdminApiError, AdminClient, ConnectionLost

KEY_VARIABLE = "APPLIANCE_ADMIN_KEY"


class ConsoleStartError(Exception):
    """The console cannot start: no key, an unreadable key file, or a key the gateway refuses."""


def read_admin_key(key_file: Path | None) -> str:
    """The admin key from `key_file`, else APPLIANCE_ADMIN_KEY, else a hidden prompt."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConsoleStartError(f"{key_file}: cannot read ({error.strerror})") from error
        if not key:
            raise ConsoleStartError(f"{key_file}: empty")
        return key
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if key:
        return key
    key = getpass.getpass("admin key: ").strip()
    if not key:
        raise ConsoleStartError(f"no admin key (use --key-file, {KEY_VARIABLE}, or type it)")
    return key


async def _check_key(url: str, key: str, verify: ssl.SSLContext | bool) -> None:
    # A wrong key fails here with one line; a gateway that is down is fine: the banner shows it.
    client = AdminClient(url, key, verify=verify)
    try:
        await client.keys()
    except ConnectionLost:
        return
    except AdminApiError as error:
        raise ConsoleStartError(f"the gateway refused the key: {error.message}") from error
    finally:
        await client.aclose()


def run_console(url: str, key_file: Path | None, *, verify: ssl.SSLContext | bool = True) -> None:
    """Run the console until the admin quits; ConsoleStartError when it cannot start. `verify`: how the
    gateway's certificate is checked (and the client certificate to show) when it serves HTTPS."""
    key = read_admin_key(key_file)
    asyncio.run(_check_key(url, key, verify))
    client = AdminClient(url, key, verify=verify)
    ConsoleApp(client, where=url).run()
