"""Leftovers in the store folder: reported, removed on request, never a used file or a running import's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.registry.registry import Registry, open_registry
from appliance.store.housekeeping import LOCK_FILE, StoreBusyError
from appliance.store.store import ModelStore
from tests.api.console import run_appliance


def _leave_debris(store: ModelStore, registry: Registry, tiny: Path) -> list[Path]:
    """What crashes leave: an import's temp file, a file whose row is gone, a half-written AWQ folder."""
    dropped = store.import_gguf(tiny, name="dropped")
    registry.models.remove("dropped")  # a crash between the row's removal and the file's
    temp = store.folder / ".0123456789abcdef.4242.tmp"
    temp.write_bytes(b"ciphertext of an import that died")
    folder = store.folder / "fedcba9876543210.awq"
    folder.mkdir()
    (folder / "0.aplm").write_bytes(b"x" * 10)
    return sorted([dropped.path, temp, folder])


def test_orphans_are_reported_and_cleaned_but_used_files_stay(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """clean() removes exactly the unreferenced entries; the kept model still verifies."""
    kept = store.import_gguf(tiny, name="kept")
    debris = _leave_debris(store, registry, tiny)
    assert store.orphans() == debris
    assert store.clean() == debris
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([kept.path.name, LOCK_FILE])
    assert store.verify("kept").name == "kept"
    assert store.orphans() == []
    assert store.clean() == []


def test_a_re_encrypted_models_file_is_not_an_orphan(store: ModelStore, tiny: Path) -> None:
    """After a re-encryption the new file is referenced and the old one is already gone."""
    store.import_gguf(tiny, name="kept")
    moved = store.reencrypt("kept")
    assert store.orphans() == []
    assert moved.path.exists()


def test_clean_during_an_import_refuses_and_leaves_its_temp_file(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """A clean-up that runs while an import writes is refused; the import then completes."""
    store.folder.mkdir(parents=True)
    seen: list[tuple[list[str], str]] = []

    def clean_midway(_done: int) -> None:
        if seen:
            return
        temps = [p.name for p in store.folder.iterdir() if p.name.endswith(".tmp")]
        with pytest.raises(StoreBusyError) as refused:
            store.clean()
        seen.append((temps, refused.value.code))
        assert [p.name for p in store.folder.iterdir() if p.name.endswith(".tmp")] == temps

    model = store.import_gguf(tiny, name="busy", progress=clean_midway)
    [(temps, code)] = seen
    assert len(temps) == 1
    assert code == "store_busy"
    assert store.verify("busy").name == model.name
    assert store.orphans() == []


def test_a_writer_in_another_process_blocks_the_clean_up(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """The lock is the kernel's flock: a writer in another process (the CLI importing) is respected too."""
    debris = _leave_debris(store, registry, tiny)
    # This child stands for `appliance models import` of another process, between temp file and row.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from appliance.store.housekeeping import writing\n"
            "with writing(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()",
            str(store.folder),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StoreBusyError):
            store.clean()
        assert all(entry.exists() for entry in debris)
    finally:
        holder.communicate("", timeout=30)
    assert store.clean() == debris


def test_cli_lists_and_cleans_leftovers(
    appliance_home: Path, store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """`appliance store list` names the leftovers; `appliance store clean` removes them and is audited."""
    store.import_gguf(tiny, name="kept")
    debris = _leave_debris(store, registry, tiny)
    listed = run_appliance("store", "list")
    assert listed.returncode == 0, listed.stderr
    assert "3 leftover file(s) no model uses" in listed.stdout
    for entry in debris:
        assert f"  {entry.name}  " in listed.stdout
    cleaned = run_appliance("store", "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.splitlines()[-1] == "3 leftover file(s) removed"
    assert not any(entry.exists() for entry in debris)
    assert "leftover" not in run_appliance("store", "list").stdout
    audit = [(e.action, e.outcome) for e in open_registry(appliance_home / "registry.db").audit.recent()]
    assert ("store.clean", "success") in audit
