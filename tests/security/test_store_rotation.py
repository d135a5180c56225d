"""Issue 17 item 7: `rotate-key` gives every model a new data key, so an old `store.key` opens nothing.

The attack: an old copy of `store.key` (and of the registry, as a version home or a backup keeps them). After
a rotation neither the old key with today's registry nor the old key with the old registry opens a model file.
The rotation is streamed and atomic per file: interrupted between files or inside one, every model stays
readable, and running it again finishes it.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from appliance.errors import StoreIntegrityError
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry, open_registry
from appliance.registry.store_keys import ModelKey
from appliance.store.folders import read_manifest
from appliance.store.format import Progress, decrypt_chunks
from appliance.store.housekeeping import LOCK_FILE
from appliance.store.keys import Kek, read_key_file, unwrap_key
from appliance.store.reencrypt import RotationIncompleteError
from appliance.store.store import ModelStore
from tests.awq_folders import write_awq_folder
from tests.e2e.server import APPLIANCE
from tests.gguf_files import write_tiny_gguf

CHUNK = 64


@pytest.fixture
def registry(appliance_home: Path) -> Registry:
    """A real, migrated registry in the test's home."""
    return open_registry(appliance_home / "registry.db")


@pytest.fixture
def store(appliance_home: Path, registry: Registry, tmp_path: Path) -> ModelStore:
    """A key-file store with three models: a GGUF with two versions and an AWQ folder."""
    store = ModelStore(appliance_home, registry, chunk_size=CHUNK)
    store.import_gguf(write_tiny_gguf(tmp_path / "a.gguf"), name="a")
    store.import_gguf(write_tiny_gguf(tmp_path / "a2.gguf", context_length=512), name="a", version="2")
    store.import_awq_folder(write_awq_folder(tmp_path / "awq"), name="folder")
    return store


def _entries(store: ModelStore) -> set[str]:
    return {p.name for p in store.folder.iterdir() if p.name != LOCK_FILE}


def _opens(data_key: bytes, path: Path) -> bool:
    """Whether `data_key` authenticates the first chunk of a stored GGUF file or an AWQ folder's manifest."""
    try:
        if path.is_dir():
            read_manifest(path, data_key)
        else:
            with path.open("rb") as handle:
                next(decrypt_chunks(handle, data_key))
    except StoreIntegrityError:
        return False
    return True


def _current_files(registry: Registry) -> list[Path]:
    found = (registry.models.get(key.model_id) for key in registry.store_keys.all())
    return [model.path for model in found if model is not None]


def _snapshot_registry(database: Path, copy: Path) -> None:
    """A consistent copy of the registry (WAL included), as a backup or an old version home would hold."""
    with sqlite3.connect(database) as source, sqlite3.connect(copy) as target:
        source.backup(target)


def _old_rows(copy: Path) -> list[bytes]:
    with sqlite3.connect(copy) as connection:
        return [row[0] for row in connection.execute("SELECT wrapped_key FROM model_keys")]


def _verify_all(store: ModelStore, registry: Registry) -> None:
    """Every stored model version decrypts to what was imported (the inactive version too)."""
    store.verify("folder")
    store.verify("a")
    registry.models.activate("a", "2")
    store.verify("a")
    registry.models.activate("a", "1")


def test_after_rotation_the_old_key_opens_no_model_file(
    appliance_home: Path, store: ModelStore, registry: Registry, tmp_path: Path
) -> None:
    """New data keys and new files for all three versions; the old key, with today's registry or with a copy
    of the old one, opens none of them; the old wrapped keys are not left in the database files."""
    old_key_file = tmp_path / "old-store.key"
    shutil.copy2(store.key_file, old_key_file)
    old_kek = read_key_file(old_key_file)
    _snapshot_registry(appliance_home / "registry.db", tmp_path / "old-registry.db")
    old_keys: list[ModelKey] = registry.store_keys.all()
    old_entries = _entries(store)
    seen: list[tuple[int, int, str, int]] = []

    def step(index: int, total: int, model: ModelInfo, size: int) -> Progress:
        seen.append((index, total, f"{model.name}@{model.version}", size))
        return lambda done: None

    assert store.rotate_key(on_model=step) == 3
    assert [(i, t, label) for i, t, label, _ in seen] == [(1, 3, "a@1"), (2, 3, "a@2"), (3, 3, "folder@1")]
    assert all(size > 0 for *_, size in seen)
    new_keys = registry.store_keys.all()
    assert {k.file_id for k in new_keys}.isdisjoint({k.file_id for k in old_keys})
    assert _entries(store).isdisjoint(old_entries)  # the old files are gone
    assert store.orphans() == []
    _verify_all(store, registry)

    # The old KEK with today's registry: it unwraps no key.
    for key in new_keys:
        with pytest.raises(StoreIntegrityError):
            unwrap_key(old_kek, key.wrapped_key, what="today's key")
    # The old KEK with the old registry: it unwraps the old data keys, and they open no file of today.
    old_data_keys = [
        unwrap_key(old_kek, wrapped, what="old") for wrapped in _old_rows(tmp_path / "old-registry.db")
    ]
    assert len(old_data_keys) == 3
    for path in _current_files(registry):
        assert not any(_opens(key, path) for key in old_data_keys), path
    # Today's registry files (database and write-ahead log) keep none of the old wrapped keys.
    database = b"".join(p.read_bytes() for p in appliance_home.glob("registry.db*"))
    assert not any(key.wrapped_key in database for key in old_keys)
    # The old key file put back: a clear refusal, not garbage.
    shutil.copy2(old_key_file, store.key_file)
    with pytest.raises(StoreIntegrityError, match="wrong key file"):
        ModelStore(appliance_home, registry).verify("a")


def test_a_rotation_interrupted_between_files_leaves_every_model_readable(
    appliance_home: Path, store: ModelStore, registry: Registry, tmp_path: Path
) -> None:
    """Stopped before the second file: the first has its new file, the others their old one (under the new
    KEK); a fresh process opens all three with the new key file; running it again finishes it."""
    old_kek = read_key_file(store.key_file)
    old_ids = {k.model_id: k.file_id for k in registry.store_keys.all()}

    def stop_before_the_second(index: int, total: int, model: ModelInfo, size: int) -> None:
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.rotate_key(on_model=stop_before_the_second)
    assert read_key_file(store.key_file) != old_kek
    ids = {k.model_id: k.file_id for k in registry.store_keys.all()}
    assert [ids[m] != old_ids[m] for m in sorted(ids)] == [True, False, False]
    assert not list(store.folder.glob(".*.tmp"))
    reopened = ModelStore(appliance_home, open_registry(appliance_home / "registry.db"))
    assert reopened.orphans() == []
    _verify_all(reopened, registry)
    for key in registry.store_keys.all():
        with pytest.raises(StoreIntegrityError):
            unwrap_key(old_kek, key.wrapped_key, what="old")

    assert reopened.rotate_key() == 3
    assert set(old_ids.values()).isdisjoint(k.file_id for k in registry.store_keys.all())
    _verify_all(reopened, registry)


@pytest.mark.parametrize("model", [2, 3])
def test_a_rotation_interrupted_inside_a_file_leaves_the_model_as_it_was(
    store: ModelStore, registry: Registry, model: int
) -> None:
    """Stopped after the first chunk of the second (a GGUF) or third (a folder) model: its temp file is gone,
    its old file and key still open it, and so do the others."""
    before = {k.model_id: k.file_id for k in registry.store_keys.all()}

    def interrupt_inside(index: int, total: int, model_info: ModelInfo, size: int) -> Progress | None:
        if index != model:
            return None

        def progress(done: int) -> None:
            if done >= CHUNK:
                raise KeyboardInterrupt

        return progress

    with pytest.raises(KeyboardInterrupt):
        store.rotate_key(on_model=interrupt_inside)
    after = {k.model_id: k.file_id for k in registry.store_keys.all()}
    assert [after[m] == before[m] for m in sorted(after)] == [i >= model for i in (1, 2, 3)]
    assert store.orphans() == []
    _verify_all(store, registry)


def test_a_damaged_model_stops_the_rotation_with_a_clear_error_and_the_rest_stays_readable(
    appliance_home: Path, store: ModelStore, registry: Registry
) -> None:
    """The second version fails its tag mid-rotation: RotationIncompleteError says 1 of 3 and what to do;
    the first (already re-encrypted) and the third (not yet) open with the new key; nothing is left over."""
    second = registry.models.version("a", "2")
    data = bytearray(second.path.read_bytes())
    data[-5] ^= 0x01
    second.path.write_bytes(bytes(data))
    with pytest.raises(
        RotationIncompleteError, match=re.escape("only 1 of 3 model(s) have new data keys")
    ) as failed:
        store.rotate_key()
    assert "run the rotation again" in failed.value.message
    assert store.orphans() == []
    reopened = ModelStore(appliance_home, registry)
    reopened.verify("a")
    reopened.verify("folder")


def test_a_passphrase_rotation_re_encrypts_with_one_derivation_per_passphrase(
    appliance_home: Path, store: ModelStore, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key file to passphrase and on to another passphrase: new files each time; the scrypt cost is paid
    once per passphrase a store object uses, not once per model."""
    import appliance.store.kek as kek_module
    from appliance.store.keys import passphrase_kek as real

    calls: list[int] = []

    def counted(passphrase: str, salt: bytes, n: int) -> Kek:
        calls.append(n)
        return real(passphrase, salt, n)

    monkeypatch.setattr(kek_module, "passphrase_kek", counted)
    first = {k.file_id for k in registry.store_keys.all()}
    assert store.rotate_key("correct horse battery staple") == 3
    assert not store.key_file.exists()
    second_store = ModelStore(appliance_home, registry, passphrase="correct horse battery staple")
    second = {k.file_id for k in registry.store_keys.all()}
    assert second_store.rotate_key("a second, longer passphrase") == 3
    assert len(calls) == 3  # the first new one; the current one, once; the second new one
    third = {k.file_id for k in registry.store_keys.all()}
    assert first.isdisjoint(second)
    assert second.isdisjoint(third)
    _verify_all(ModelStore(appliance_home, registry, passphrase="a second, longer passphrase"), registry)


def test_a_worker_start_that_races_a_rotation_loads_the_new_files(
    store: ModelStore, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway read a model's key and file just before a rotation committed and removed them (and its
    ModelInfo is older still): the sealed memfd of the GGUF and the tmpfs copy of the folder still come out
    whole, from the files the rotation wrote."""
    gguf, folder = registry.models.version("a", "1"), registry.models.version("folder", "1")
    real = registry.store_keys.current_file
    rotations: list[int] = []

    def racing(model_id: int) -> tuple[ModelKey, Path] | None:
        found = real(model_id)
        if len(rotations) < 2 and model_id in (gguf.id, folder.id) and model_id not in rotations:
            rotations.append(model_id)
            store.rotate_key()  # a new KEK, new keys, new files; the ones `found` names are gone
        return found

    monkeypatch.setattr(registry.store_keys, "current_file", racing)
    fd = store.decrypt_to_memfd(gguf)
    try:
        assert os.fstat(fd).st_size == gguf.size_bytes
        assert os.pread(fd, 4, 0) == b"GGUF"
    finally:
        os.close(fd)
    loaded = store.decrypt_to_folder(folder, tmp_path)
    originals = {p.relative_to(tmp_path / "awq").as_posix() for p in (tmp_path / "awq").rglob("*")}
    assert {p.relative_to(loaded).as_posix() for p in loaded.rglob("*")} == originals
    assert rotations == [gguf.id, folder.id]


def test_rotation_streams_a_real_model_in_bounded_memory(
    appliance_home: Path, registry: Registry, model_path: Path
) -> None:
    """SmolLM2 (98 MB) re-encrypted with the default 1 MiB chunks: Python's peak stays a few chunks."""
    store = ModelStore(appliance_home, registry)
    store.import_gguf(model_path, name="smol")
    tracemalloc.start()
    try:
        assert store.rotate_key() == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024 < model_path.stat().st_size
    store.verify("smol")


def test_the_cli_prints_a_line_per_model(appliance_home: Path, store: ModelStore, registry: Registry) -> None:
    """`appliance store rotate-key` names each model version with its number and size, then the total."""
    environment = os.environ | {"APPLIANCE_HOME": str(appliance_home)}
    done = subprocess.run(
        [APPLIANCE, "store", "rotate-key"], env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [re.sub(r"\(\d+ MB\)", "(N MB)", line) for line in lines[:3]] == [
        "re-encrypting 1/3 a@1 (N MB)",
        "re-encrypting 2/3 a@2 (N MB)",
        "re-encrypting 3/3 folder@1 (N MB)",
    ]
    assert lines[3].startswith("re-encrypted 3 model(s) under new data keys and a new key (key file ")
    _verify_all(ModelStore(appliance_home, registry), registry)
