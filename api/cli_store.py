"""CLI of the encrypted store: `appliance models import|verify|export|remove`, `appliance store …`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.model_settings import ToolParserOption
from appliance.cli.store_access import open_home_store, progress_line
from appliance.engines.vllm.tool_parsers import AUTO, check_tool_parser
from appliance.errors import ApplianceError
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.safe_files import folder_files, is_folder, size_of
from appliance.store.format import Progress
from appliance.store.housekeeping import StoreBusyError, entry_bytes
from appliance.store.keys import check_new_passphrase
from appliance.store.store import ModelStore

NEW_PASSPHRASE_VARIABLE = "APPLIANCE_STORE_NEW_PASSPHRASE"  # noqa: S105 - a variable name, not a secret

store_app = typer.Typer(no_args_is_help=True, help="The encrypted model store: list, rotate the key.")


def _open_store() -> tuple[ModelStore, Registry]:
    """The store and registry of APPLIANCE_HOME (created on first use)."""
    _, store, registry = open_home_store()
    return store, registry


_progress = progress_line


def models_import(
    path: Path,
    name: Annotated[str, typer.Option(help="model name")],
    alias: Annotated[list[str] | None, typer.Option(help="another name for the model; repeatable")] = None,
    version: Annotated[
        str | None,
        typer.Option(help="a GGUF file as a new version of an existing model (then `models activate`)"),
    ] = None,
    tool_parser: ToolParserOption = None,
) -> None:
    """Encrypt a GGUF file or an AWQ model folder into the store and register it (the original stays)."""
    parser = check_tool_parser(tool_parser) if tool_parser is not None else None
    settings, store, registry = open_home_store()
    settings.store.refuse_unsigned(path)
    if is_folder(path):
        size = size_of(folder_files(path))  # the store checks the folder again, with the allow-list
        model = store.import_awq_folder(
            path,
            name=name,
            aliases=tuple(alias or ()),
            progress=_progress("encrypting", size),
            tool_parser=None if parser == AUTO else parser,
        )
    else:
        size = path.lstat().st_size if os.path.lexists(path) else 0
        model = store.import_gguf(
            path,
            name=name,
            aliases=tuple(alias or ()),
            progress=_progress("encrypting", size),
            version=version,
        )
    registry.audit.record("models.import", outcome="success", target=model.name, detail="cli")
    typer.echo(
        f"imported {model.name} version {model.version} ({model.architecture}, {model.quantization}) "
        "into the encrypted store" + ("" if model.active else "; switch with `appliance models activate`")
    )


def models_verify(name: str) -> None:
    """Decrypt a stored model end to end and check every chunk and its SHA-256."""
    store, registry = _open_store()
    model = next((m for m in registry.models.list() if name in m.public_names), None)
    total = store.content_bytes(model) if model is not None else 0
    store.verify(name, progress=_progress("verifying", total))
    typer.echo(f"{name}: ok")


def models_reencrypt(name: str) -> None:
    """Re-encrypt a stored model under a new data key; the old file goes only once the new one verifies."""
    store, registry = _open_store()
    model = next((m for m in registry.models.list() if name in m.public_names), None)
    total = store.content_bytes(model) if model is not None else 0
    done = store.reencrypt(
        name, progress=_progress("re-encrypting", total), verify_progress=_progress("verifying", total)
    )
    registry.audit.record("models.reencrypt", outcome="success", target=done.name, detail="cli")
    typer.echo(f"re-encrypted {done.name} under a new data key (running workers keep their loaded copy)")


def models_export(
    name: str, to: Annotated[Path, typer.Option("--to", help="file (or folder) to write the plaintext to")]
) -> None:
    """Decrypt a stored model to a file the admin names (audited)."""
    store, registry = _open_store()
    target = store.export(name, to)
    registry.audit.record("models.export", outcome="success", target=name, detail=f"cli: {target}")
    typer.echo(f"exported {name} to {target}")


def models_remove(name: str) -> None:
    """Unregister a model; an encrypted one's file and key are deleted too."""
    store, registry = _open_store()
    removed = store.remove(name)
    registry.audit.record("models.remove", outcome="success", target=removed.name, detail="cli")
    typer.echo(f"removed {removed.name}")


@store_app.command("list")
def store_list() -> None:
    """Every model with whether it is encrypted, its size and its size in the store."""
    store, _ = _open_store()
    typer.echo(f"{'NAME':20}  {'ENCRYPTED':9}  {'SIZE MB':>9}  {'STORED MB':>9}")
    for m in store.list():
        encrypted = "yes" if m.encrypted else "no"
        typer.echo(f"{m.name:20}  {encrypted:9}  {m.plain_bytes / 1e6:9.1f}  {m.stored_bytes / 1e6:9.1f}")
    try:
        orphans = store.orphans()
    except StoreBusyError:
        typer.echo("an import or re-encryption is running: leftover files are not counted now")
        return
    if orphans:
        typer.echo(f"\n{len(orphans)} leftover file(s) no model uses; `appliance store clean` removes them:")
        for entry in orphans:
            typer.echo(f"  {entry.name}  {entry_bytes(entry) / 1e6:.1f} MB")


@store_app.command("clean")
def store_clean() -> None:
    """Remove files in the store that no model uses (left by an interrupted import or re-encryption)."""
    store, registry = _open_store()
    removed = store.clean()
    for entry in removed:
        typer.echo(f"removed {entry.name}")
    registry.audit.record("store.clean", outcome="success", detail=f"cli: {len(removed)} removed")
    typer.echo(f"{len(removed)} leftover file(s) removed")


@store_app.command("rotate-key")
def store_rotate_key(
    passphrase: Annotated[
        bool, typer.Option(help="switch to (or stay in) passphrase mode: the new KEK comes from a passphrase")
    ] = False,
) -> None:
    """A new key-encryption key and a new data key for every model, each file re-encrypted; the old key
    then opens nothing."""
    store, registry = _open_store()
    new_passphrase = None
    if passphrase:
        new_passphrase = os.environ.get(NEW_PASSPHRASE_VARIABLE) or typer.prompt(
            "new store passphrase", hide_input=True, confirmation_prompt=True, err=True
        )
        check_new_passphrase(new_passphrase)  # a one-line refusal before the store is touched
    try:
        count = store.rotate_key(new_passphrase, on_model=_rotation_step)
    except KeyboardInterrupt:
        raise ApplianceError(
            "interrupted: every model still opens with the store's current key; "
            "run `appliance store rotate-key` again to give every model a new data key"
        ) from None
    registry.audit.record("store.rotate_key", outcome="success", detail=f"cli: {count} re-encrypted")
    mode = "a passphrase" if passphrase else f"key file {store.key_file}"
    typer.echo(f"re-encrypted {count} model(s) under new data keys and a new key ({mode})")


def _rotation_step(index: int, total: int, model: ModelInfo, size: int) -> Progress:
    """One line per model a rotation re-encrypts, then that model's byte progress."""
    label = f"{model.name}@{model.version}"
    typer.echo(f"re-encrypting {index}/{total} {label} ({size / 1e6:.0f} MB)")
    return _progress(f"  {label}", size)


def register_store_commands(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add the store's commands to `appliance models` and the `appliance store` group."""
    models_app.command("import")(models_import)
    models_app.command("verify")(models_verify)
    models_app.command("export")(models_export)
    models_app.command("reencrypt")(models_reencrypt)
    models_app.command("remove")(models_remove)
    app.add_typer(store_app, name="store")
