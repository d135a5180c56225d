"""Store operations over a real registry: import, verify, export, remove, list, keys, rotation, memfd."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import llama_cpp
import pytest

from appliance.errors import ConflictError, ModelFileError, StoreIntegrityError
from appliance.gguf_info import read_gguf_info
from appliance.registry.registry import Registry
from appliance.store.housekeeping import LOCK_FILE
from appliance.store.keys import KeyFileError, new_kek, read_key_file, unwrap_key, write_key_file
from appliance.store.locked import StoreLockedError
from appliance.store.store import ModelStore, UnencryptedModelError
from tests.appliance.store.conftest import CHUNK
from tests.gguf_files import write_tiny_gguf


def _store_files(store: ModelStore) -> list[str]:
    if not store.folder.exists():
        return []
    return sorted(p.name for p in store.folder.iterdir() if p.name != LOCK_FILE)


def test_real_model_round_trip(
    appliance_home: Path, registry: Registry, model_path: Path, tmp_path: Path
) -> None:
    """SmolLM2 imports, verifies and exports byte for byte; the stored file holds no plaintext."""
    store = ModelStore(appliance_home, registry)
    progress: list[int] = []
    model = store.import_gguf(model_path, name="smol", aliases=("default",), progress=progress.append)
    assert progress[-1] == model_path.stat().st_size
    plain = model_path.read_bytes()
    stored = model.path.read_bytes()
    assert model.path.parent == store.folder
    assert not stored.startswith(b"GGUF")
    middle = len(plain) // 2
    assert plain[middle : middle + 64] not in stored
    assert store.verify("default").name == "smol"
    exported = store.export("smol", tmp_path / "out.gguf")
    assert exported.read_bytes() == plain
    assert exported.stat().st_mode & 0o777 == 0o600
    assert store.key_file.stat().st_mode & 0o777 == 0o600


def test_list_and_remove(store: ModelStore, registry: Registry, tiny: Path) -> None:
    """The list shows plain and stored sizes; remove deletes the row, the key and the file."""
    store.import_gguf(tiny, name="tiny")
    [listed] = store.list()
    assert listed.encrypted
    assert listed.plain_bytes == tiny.stat().st_size
    assert listed.stored_bytes == listed.path.stat().st_size > listed.plain_bytes
    store.remove("tiny")
    assert store.list() == []
    assert _store_files(store) == []
    assert registry.store_keys.all() == []


def test_plain_model_is_listed_as_unencrypted_and_refused_when_required(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """A model added the old way stays plain, and require_encrypted names it."""
    from appliance.gguf_info import read_gguf_info

    registry.models.add(tiny, read_gguf_info(tiny), name="plain")
    assert [m.encrypted for m in store.list()] == [False]
    with pytest.raises(UnencryptedModelError, match="'plain'"):
        store.require_encrypted(registry.models.enabled())


def test_failed_imports_leave_nothing(
    store: ModelStore, registry: Registry, tiny: Path, tmp_path: Path
) -> None:
    """Not a GGUF, a taken name, or an interruption mid-way: no file in the store, no registry row."""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        store.import_gguf(junk, name="junk")
    store.import_gguf(tiny, name="tiny")
    before = _store_files(store)
    with pytest.raises(ConflictError):
        store.import_gguf(tiny, name="other", aliases=("tiny",))

    def interrupt(done: int) -> None:
        if done > CHUNK:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_gguf(tiny, name="interrupted", progress=interrupt)
    assert _store_files(store) == before
    assert [m.name for m in registry.models.list()] == ["tiny"]
    assert len(registry.store_keys.all()) == 1


def test_tampered_store_file_fails_verify(store: ModelStore, tiny: Path) -> None:
    """One flipped bit in the stored file: verify raises an integrity error."""
    model = store.import_gguf(tiny, name="tiny")
    data = bytearray(model.path.read_bytes())
    data[len(data) // 2] ^= 0x80
    model.path.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError):
        store.verify("tiny")


def test_wrong_key_file_opens_nothing(store: ModelStore, tiny: Path) -> None:
    """Another key file in place of the store's: a clear integrity error, not garbage."""
    store.import_gguf(tiny, name="tiny")
    store.key_file.unlink()
    write_key_file(store.key_file, new_kek())
    with pytest.raises(StoreIntegrityError, match="wrong key file"):
        store.verify("tiny")


def test_key_file_readable_by_others_is_refused(store: ModelStore, tiny: Path) -> None:
    """A key file with group or other permissions is refused."""
    store.import_gguf(tiny, name="tiny")
    store.key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        store.verify("tiny")


def test_rotation_re_encrypts_and_the_old_key_opens_nothing(
    store: ModelStore, registry: Registry, tiny: Path, tmp_path: Path
) -> None:
    """After a rotation every model verifies from new files; the old KEK unwraps none of the new wrapped keys
    (tests/security/test_store_rotation.py tries the old key on the files themselves)."""
    store.import_gguf(tiny, name="a")
    store.import_gguf(write_tiny_gguf(tmp_path / "b.gguf", context_length=512), name="b")
    old = read_key_file(store.key_file)
    files_before = set(_store_files(store))
    assert store.rotate_key() == 2
    assert read_key_file(store.key_file) != old
    assert not files_before & set(_store_files(store))  # every weight file written again, the old ones gone
    store.verify("a")
    store.verify("b")
    for key in registry.store_keys.all():
        with pytest.raises(StoreIntegrityError):
            unwrap_key(old, key.wrapped_key, what="old")


def test_interrupted_rotation_is_completed(store: ModelStore, registry: Registry, tiny: Path) -> None:
    """Keys re-wrapped but the new key file not yet installed: the next open installs it."""
    store.import_gguf(tiny, name="tiny")
    store.rotate_key()
    current = read_key_file(store.key_file)
    pending = store.key_file.with_name("store.key.new")
    os.replace(store.key_file, pending)
    write_key_file(store.key_file, new_kek())  # the old key, still in place
    store.verify("tiny")
    assert read_key_file(store.key_file) == current
    assert not pending.exists()


def test_passphrase_mode(appliance_home: Path, registry: Registry, store: ModelStore, tiny: Path) -> None:
    """A passphrase rotation removes the key file; the right passphrase opens; a wrong one or none fails."""
    store.import_gguf(tiny, name="tiny")
    store.rotate_key("correct horse battery staple")
    assert not store.key_file.exists()
    ModelStore(appliance_home, registry, passphrase="correct horse battery staple").verify("tiny")
    with pytest.raises(StoreIntegrityError, match="wrong store passphrase"):
        ModelStore(appliance_home, registry, passphrase="wrong horse").verify("tiny")
    with pytest.raises(StoreLockedError):
        ModelStore(appliance_home, registry).verify("tiny")


def test_memfd_is_sealed_and_loads_in_llama_cpp(
    appliance_home: Path, registry: Registry, model_path: Path
) -> None:
    """The memfd holds the plaintext, refuses writes, and llama.cpp loads `/proc/self/fd/N`."""
    store = ModelStore(appliance_home, registry)
    model = store.import_gguf(model_path, name="smol")
    fd = store.decrypt_to_memfd(model)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        wanted = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
        assert seals & wanted == wanted
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        assert os.pread(fd, 4, 0) == b"GGUF"
        assert os.fstat(fd).st_size == model_path.stat().st_size
        loaded = llama_cpp.llama_model_load_from_file(
            f"/proc/self/fd/{fd}".encode(), llama_cpp.llama_model_default_params()
        )
        assert loaded
        assert llama_cpp.llama_model_n_ctx_train(loaded) == 8192
        llama_cpp.llama_model_free(loaded)
    finally:
        os.close(fd)


def test_reencrypt_replaces_the_file_under_a_new_data_key(
    store: ModelStore, registry: Registry, tiny: Path, tmp_path: Path
) -> None:
    """New file id, new bytes, new wrapped key; it verifies and exports the same plaintext; old file gone."""
    model = store.import_gguf(tiny, name="tiny")
    old_key = registry.store_keys.get(model.id)
    old_bytes = model.path.read_bytes()
    steps: list[int] = []
    done = store.reencrypt("tiny", progress=steps.append, verify_progress=steps.append)
    new_key = registry.store_keys.get(model.id)
    assert old_key is not None
    assert new_key is not None
    assert new_key.file_id != old_key.file_id
    assert new_key.wrapped_key != old_key.wrapped_key
    assert not model.path.exists()
    assert done.path.read_bytes() != old_bytes
    assert _store_files(store) == [done.path.name]
    assert steps[-1] == tiny.stat().st_size
    store.verify("tiny")
    assert store.export("tiny", tmp_path / "out.gguf").read_bytes() == tiny.read_bytes()


def test_reencrypt_of_a_tampered_model_leaves_it_as_it_was(store: ModelStore, tiny: Path) -> None:
    """A source chunk that fails its tag stops the re-encryption: no new file, the old one untouched."""
    model = store.import_gguf(tiny, name="tiny")
    data = bytearray(model.path.read_bytes())
    data[-5] ^= 0x01
    model.path.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError):
        store.reencrypt("tiny")
    assert _store_files(store) == [model.path.name]
    assert model.path.read_bytes() == bytes(data)


def test_reencrypt_refuses_a_plain_model(store: ModelStore, registry: Registry, tiny: Path) -> None:
    """A model that is not in the encrypted store has nothing to re-encrypt."""
    registry.models.add(tiny, read_gguf_info(tiny), name="plain")
    with pytest.raises(ModelFileError):
        store.reencrypt("plain")


def test_a_new_version_is_imported_beside_and_remove_takes_every_version(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """`import --version 2` stores a second encrypted file for the same name, inactive; removing the model
    deletes both files and both rows."""
    first = store.import_gguf(tiny, name="m", aliases=("a",))
    second = store.import_gguf(tiny, name="m", version="2")
    assert (second.version, second.active, second.aliases) == ("2", False, ("a",))
    assert store.is_encrypted(second)
    assert second.path != first.path
    assert len(list(store.folder.glob("*.aplm"))) == 2
    with pytest.raises(ConflictError, match="already used"):
        store.import_gguf(tiny, name="other", aliases=("m",))
    store.remove("a")
    assert list(store.folder.glob("*.aplm")) == []
    assert registry.models.list() == []
    assert registry.store_keys.all() == []
