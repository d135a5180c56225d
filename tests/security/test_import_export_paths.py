"""Import and export paths: no link followed, regular files only, no kernel files, an optional allow-list,
bounded config reads, and exports that never overwrite and never leave half a file."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.errors import ApplianceError, ConflictError, ModelFileError, SettingsError
from appliance.registry.registry import Registry, open_registry
from appliance.safe_files import FileTooLargeError, UnsafePathError
from appliance.settings import load_settings
from appliance.store.store import ModelStore
from tests.api.console import run_appliance
from tests.api.test_console_gpu import gateway_app
from tests.awq_folders import write_awq_folder
from tests.gguf_files import write_tiny_gguf

HANG_S = 20.0  # a bound on a call that must return at once, not a timing assertion


@pytest.fixture
def registry(appliance_home: Path) -> Registry:
    """A real registry in the test's home."""
    appliance_home.mkdir(parents=True, exist_ok=True)
    return open_registry(appliance_home / "registry.db")


@pytest.fixture
def store(appliance_home: Path, registry: Registry) -> ModelStore:
    """The store of the test's home, no allow-list."""
    return ModelStore(appliance_home, registry, chunk_size=64)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A valid GGUF file."""
    (tmp_path / "src").mkdir()
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf")


def _nothing_stored(store: ModelStore, registry: Registry) -> None:
    assert registry.models.list() == []
    assert not store.folder.exists() or list(store.folder.iterdir()) == []


def test_a_link_to_a_model_is_not_followed(store: ModelStore, registry: Registry, tiny: Path) -> None:
    """A symlink, even to a valid GGUF, is refused as a link."""
    link = tiny.with_name("link.gguf")
    link.symlink_to(tiny)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.import_gguf(link, name="linked")
    _nothing_stored(store, registry)


def test_a_fifo_is_refused_at_once(store: ModelStore, registry: Registry, tmp_path: Path) -> None:
    """A FIFO is not opened for a blocking read (that waits for a writer forever): refused in an instant."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            store.import_gguf(fifo, name="fifo")
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread to assert on
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(HANG_S)
    if worker.is_alive():  # release the blocked open before failing, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(HANG_S)
        pytest.fail("importing a FIFO blocked")
    assert isinstance(outcome[0], UnsafePathError), outcome
    assert "FIFO" in outcome[0].message
    _nothing_stored(store, registry)


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/uevent_seqnum"])
def test_kernel_files_are_refused(store: ModelStore, path: str) -> None:
    """/proc and /sys files look regular, but are the processes' and the kernel's state: refused."""
    with pytest.raises(UnsafePathError, match="kernel"):
        store.import_gguf(Path(path), name="proc")


def test_a_folder_with_a_link_or_a_fifo_inside_is_refused(
    store: ModelStore, registry: Registry, tmp_path: Path
) -> None:
    """A link inside an AWQ folder could pull any file of the box into the store: the folder is refused."""
    linked = write_awq_folder(tmp_path / "linked")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    (linked / "extra.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.import_awq_folder(linked, name="linked")
    piped = write_awq_folder(tmp_path / "piped")
    os.mkfifo(piped / "pipe")
    with pytest.raises(UnsafePathError, match="FIFO"):
        store.import_awq_folder(piped, name="piped")
    whole = tmp_path / "whole-link"
    whole.symlink_to(write_awq_folder(tmp_path / "real"))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.import_awq_folder(whole, name="whole")
    _nothing_stored(store, registry)


def test_config_json_is_read_with_a_bound(store: ModelStore, tmp_path: Path) -> None:
    """A huge config.json is refused unread; a deeply nested one is one clear error, not a RecursionError."""
    big = write_awq_folder(tmp_path / "big")
    config = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps(config) + " " * (2 * 1024 * 1024))
    with pytest.raises(FileTooLargeError, match="larger than"):
        store.import_awq_folder(big, name="big")
    deep = write_awq_folder(tmp_path / "deep")
    (deep / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFileError, match=r"config\.json"):
        store.import_awq_folder(deep, name="deep")


def test_the_allow_list_confines_imports(appliance_home: Path, registry: Registry, tmp_path: Path) -> None:
    """With import_folders set, a file outside them, or reached through a link out of them, is refused."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    store = ModelStore(appliance_home, registry, import_folders=(allowed,))
    with pytest.raises(UnsafePathError, match="allowed import folder"):
        store.import_gguf(write_tiny_gguf(outside / "m.gguf"), name="outside")
    (allowed / "door").symlink_to(outside)  # a linked parent: the real path is outside
    with pytest.raises(UnsafePathError, match="allowed import folder"):
        store.import_gguf(allowed / "door" / "m.gguf", name="door")
    with pytest.raises(UnsafePathError, match="allowed import folder"):
        store.import_awq_folder(write_awq_folder(outside / "awq"), name="awq")
    assert store.import_gguf(write_tiny_gguf(allowed / "ok.gguf"), name="inside").name == "inside"


def test_import_folders_must_be_absolute(appliance_home: Path) -> None:
    """A relative folder in the allow-list is a settings error naming it."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text('[store]\nimport_folders = ["models"]\n')
    with pytest.raises(SettingsError, match="not an absolute path"):
        load_settings(appliance_home)


def _gateway_with_hostile_paths(
    home: Path, tmp_path: Path, tiny: Path
) -> tuple[Litestar, dict[str, str], list[Path]]:
    """A gateway whose allow-list is `tiny`'s folder, its admin headers, and paths it must refuse."""
    allowed = tiny.parent
    home.mkdir(parents=True)
    (home / "settings.toml").write_text(f'[store]\nimport_folders = ["{allowed}"]\n')
    link = allowed / "link.gguf"
    link.symlink_to(tiny)
    fifo = allowed / "fifo.gguf"
    os.mkfifo(fifo)
    outside = write_tiny_gguf(tmp_path / "outside.gguf")
    app, admin = gateway_app(home)
    return app, {"Authorization": f"Bearer {admin}"}, [link, fifo, outside, Path("/proc/self/environ")]


async def test_admin_api_applies_the_rules(appliance_home: Path, tmp_path: Path, tiny: Path) -> None:
    """Through POST /admin/models/import: a link, a FIFO and a path outside the allow-list are 400
    `unsafe_path`, in OpenAI's error shape, plain or encrypted; a file inside is accepted."""
    app, headers, refused = _gateway_with_hostile_paths(appliance_home, tmp_path, tiny)
    async with AsyncTestClient(app) as client:
        for path in refused:
            for encrypt in (True, False):
                body = {"path": str(path), "name": "m", "encrypt": encrypt}
                answer = await client.post("/admin/models/import", json=body, headers=headers)
                assert answer.status_code == 400, (path, answer.text)
                error = answer.json()["error"]
                assert (error["code"], error["param"], error["type"]) == (
                    "unsafe_path",
                    "path",
                    "invalid_request_error",
                )
        accepted = await client.post(
            "/admin/models/import", json={"path": str(tiny), "name": "fine"}, headers=headers
        )
        assert accepted.status_code == 202, accepted.text


def test_cli_import_of_a_link_is_one_error_line(tiny: Path) -> None:
    """`appliance models import LINK`: exit 1, one line naming the link."""
    link = tiny.with_name("link.gguf")
    link.symlink_to(tiny)
    done = run_appliance("models", "import", str(link), "--name", "linked")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {link}: a symbolic link; imports follow none"]


@pytest.fixture
def stored(store: ModelStore, tiny: Path) -> ModelStore:
    """The store with `tiny` imported."""
    store.import_gguf(tiny, name="tiny")
    return store


def test_export_never_overwrites_a_file_or_a_link(stored: ModelStore, tmp_path: Path) -> None:
    """An existing file, a dangling link and a link to a folder are all refused; none of them changes."""
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "existing.gguf"
    existing.write_text("keep me")
    with pytest.raises(ConflictError, match="exists already"):
        stored.export("tiny", existing)
    dangling = out / "dangling.gguf"
    dangling.symlink_to(tmp_path / "elsewhere.gguf")
    with pytest.raises(ApplianceError, match="symbolic link"):
        stored.export("tiny", dangling)
    to_folder = out / "to-folder"
    to_folder.symlink_to(tmp_path / "src")
    with pytest.raises(ApplianceError, match="symbolic link"):
        stored.export("tiny", to_folder)
    assert existing.read_text() == "keep me"
    assert dangling.is_symlink()
    assert not (tmp_path / "elsewhere.gguf").exists()
    assert not (tmp_path / "src" / "tiny.gguf.gguf").exists()
    assert sorted(p.name for p in out.iterdir()) == ["dangling.gguf", "existing.gguf", "to-folder"]


def test_a_file_that_appears_during_the_export_is_kept(
    stored: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is taken at the end without replacing: a file created meanwhile wins, the export fails."""
    target = tmp_path / "raced.gguf"
    plain = stored._plain_chunks

    def racing(model: object) -> Iterator[bytes]:
        yield from plain(model)  # type: ignore[arg-type]
        target.write_text("someone else's")

    monkeypatch.setattr(stored, "_plain_chunks", racing)
    with pytest.raises(ConflictError, match="exists already"):
        stored.export("tiny", target)
    assert target.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_export_leaves_no_file(
    stored: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut off half way: neither the target nor a temp file is left."""
    plain = stored._plain_chunks

    def broken(model: object) -> Iterator[bytes]:
        yield next(iter(plain(model)))  # type: ignore[arg-type]
        raise OSError("disk gone")

    monkeypatch.setattr(stored, "_plain_chunks", broken)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="disk gone"):
        stored.export("tiny", out / "half.gguf")
    assert list(out.iterdir()) == []


def test_export_writes_a_new_private_file_and_folder(store: ModelStore, tiny: Path, tmp_path: Path) -> None:
    """The good path still works: a GGUF into a folder (named after the model), an AWQ folder to a path."""
    store.import_gguf(tiny, name="tiny")
    out = tmp_path / "out"
    out.mkdir()
    written = store.export("tiny", out)
    assert written == out / "tiny.gguf"
    assert written.read_bytes() == tiny.read_bytes()
    assert written.stat().st_mode & 0o777 == 0o600
    store.import_awq_folder(write_awq_folder(tmp_path / "awq"), name="awq")
    folder = store.export("awq", out / "awq-copy")
    assert (folder / "config.json").read_bytes() == (tmp_path / "awq" / "config.json").read_bytes()
    assert store.export("awq", folder) == folder / "awq"  # into an existing folder, named after the model
    with pytest.raises(ConflictError, match="exists already"):
        store.export("awq", folder)
