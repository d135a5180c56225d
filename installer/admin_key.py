"""The admin key that `install --start` creates once, in PREFIX/data/admin.key, with the appliance's own CLI.

The installer needs a key of its own to ask the gateway whether it is ready (every route but liveness needs
one), and the admin needs one to reach the admin API: the same key serves both. It is made by the installed
version's `appliance keys create`, run as the service user when the data belongs to one (the registry's
files must stay the service's), and kept for good: a re-install or an upgrade reuses the file, so that no
second admin key piles up in the registry. The file is root's (or the invoking user's), mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from installer.data import data_owner
from installer.errors import InstallStepError
from installer.state import Prefix, atomic_write
from installer.steps import clean_env, run_step

ADMIN_KEY_NAME = "admin"


def service_account(prefix: Prefix) -> tuple[int, int] | None:
    """The (uid, gid) to run the appliance as: the data's owner when we are root and it is not; else None."""
    return data_owner(prefix) if os.geteuid() == 0 else None


def read_admin_key(prefix: Prefix) -> str | None:
    """The admin key from its file; None when there is none (a link is not followed: root reads this)."""
    try:
        fd = os.open(prefix.admin_key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as stream:
        key = stream.read(4096).strip()
    return key or None


def ensure_admin_key(prefix: Prefix) -> tuple[Path, str | None]:
    """The admin key file, created on the first call; returns its path and the new key (None: kept)."""
    if read_admin_key(prefix) is not None:
        return prefix.admin_key, None
    appliance = str(prefix.current_link / "venv" / "bin" / "appliance")
    argv = [appliance, "keys", "create", "--name", ADMIN_KEY_NAME, "--role", "admin", "--quiet"]
    out = run_step("create the admin key", argv, clean_env(prefix.data), service_account(prefix))
    key = out.strip()
    if not key or len(key.split()) != 1:
        raise InstallStepError(
            f"create the admin key: `appliance keys create` printed {len(out)} bytes, not a key"
        )
    # Written whole or not at all; os.replace also replaces a link planted in its place, never its target.
    atomic_write(prefix.admin_key, (key + "\n").encode("ascii"), mode=0o600)
    return prefix.admin_key, key
