"""Opening a home's settings, registry and store for a CLI command, and the CLI's progress line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from appliance.default_settings import write_default_settings
from appliance.registry.registry import Registry, open_registry
from appliance.settings import Settings, home_from_environment, load_settings
from appliance.store.format import Progress
from appliance.store.staging import remove_abandoned
from appliance.store.store import ModelStore

PASSPHRASE_VARIABLE = "APPLIANCE_STORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
"""In passphrase mode, the CLI reads the current passphrase from here, or else prompts for it."""


def open_home_store(
    import_folders: tuple[Path, ...] | None = None,
) -> tuple[Settings, ModelStore, Registry]:
    """Settings, store and registry of APPLIANCE_HOME (created on first use); `import_folders` replaces
    `[store] import_folders` for a source the command itself vouches for (a verified bundle's extraction)."""
    home = home_from_environment()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_abandoned(home)  # plaintext that a killed `models import-bundle` left
    write_default_settings(home)
    settings = load_settings(home)
    registry = open_registry(settings.database_path)
    kek = registry.store_keys.kek()
    passphrase = os.environ.get(PASSPHRASE_VARIABLE)
    if kek is not None and kek.mode == "passphrase" and passphrase is None:
        passphrase = typer.prompt("store passphrase", hide_input=True, err=True)
    folders = settings.store.import_roots if import_folders is None else import_folders
    store = ModelStore(settings.home, registry, passphrase=passphrase, import_folders=folders)
    return settings, store, registry


def progress_line(verb: str, total: int) -> Progress:
    """A one-line progress display on stderr: redrawn in place on a terminal, every 25 % into a log."""
    step = 1 if sys.stderr.isatty() else 25
    shown = [-1]

    def show(done: int) -> None:
        percent = 100 * done // total if total else 100
        if percent // step == shown[0] and done < total:
            return
        shown[0] = percent // step
        end = "\n" if done >= total or step > 1 else ""
        sys.stderr.write(f"\r{verb}: {percent:3d}% ({done / 1e6:.1f} / {total / 1e6:.1f} MB){end}")
        sys.stderr.flush()

    return show
