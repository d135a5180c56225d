"""AWQ model folders in the store: import, verify, export, remove, and the vLLM tmpfs loading path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.engines.kind import Launch
from appliance.errors import ModelFileError, StoreIntegrityError
from appliance.planner import ModelPlan
from appliance.registry.models import ModelInfo
from appliance.registry.registry import Registry
from appliance.settings import Settings
from appliance.store.folders import MANIFEST
from appliance.store.loading import sealed_model_source
from appliance.store.store import ModelStore
from appliance.store.tmpfs import (
    SHARED_MEMORY,
    NoPrivateMemoryFolderError,
    file_system_type,
    private_memory_parent,
    sweep_stale_folders,
)
from tests.api.console import run_appliance
from tests.awq_folders import write_awq_folder


def _originals(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def awq(tmp_path: Path) -> Path:
    """The tiny AWQ folder."""
    return write_awq_folder(tmp_path / "tiny-awq")


def test_import_verify_export_remove(store: ModelStore, awq: Path, tmp_path: Path) -> None:
    """Every file encrypted on its own (no plaintext stored); export re-creates the folder byte for byte."""
    progress: list[int] = []
    model = store.import_awq_folder(awq, name="tiny", aliases=("t",), progress=progress.append)
    originals = _originals(awq)
    assert progress[-1] == sum(len(data) for data in originals.values())
    assert (model.format, model.quantization, model.architecture) == ("awq", "AWQ", "LlamaForCausalLM")
    assert model.context_length == 2048
    assert model.has_chat_template
    assert model.size_bytes == len(originals["model.safetensors"])
    assert model.path.parent == store.folder
    assert model.path.is_dir()
    stored = sorted(p.name for p in model.path.iterdir())
    assert stored == sorted([MANIFEST, *(f"{i}.aplm" for i in range(len(originals)))])
    headers = set()
    for path in model.path.iterdir():
        data = path.read_bytes()
        assert b"canary-weights" not in data
        assert b"quant_method" not in data
        headers.add(data[:50])  # magic, version, chunk size, salt: the salts differ
    assert len(headers) == len(stored)
    assert store.verify("t").name == "tiny"
    exported = store.export("tiny", tmp_path / "out")
    assert _originals(exported) == originals
    assert store.export("tiny", tmp_path).name == "tiny"  # into an existing folder, named after the model
    assert [m.name for m in store.list() if m.encrypted] == ["tiny"]
    store.remove("tiny")
    assert not model.path.exists()
    assert store.list() == []


def test_reencrypt_writes_a_new_folder_under_a_new_data_key(
    store: ModelStore, registry: Registry, awq: Path, tmp_path: Path
) -> None:
    """A folder model re-encrypts (it was refused before): a new `<id>.awq` under a new data key, the old
    folder gone, every file and the manifest written again; it verifies and exports the same files."""
    model = store.import_awq_folder(awq, name="tiny")
    old_key = registry.store_keys.get(model.id)
    old_bytes = {p.name: p.read_bytes() for p in model.path.iterdir()}
    steps: list[int] = []
    done = store.reencrypt("tiny", progress=steps.append)
    new_key = registry.store_keys.get(model.id)
    assert old_key is not None
    assert new_key is not None
    assert new_key.file_id != old_key.file_id
    assert new_key.wrapped_key != old_key.wrapped_key
    assert done.path.name == f"{new_key.file_id}.awq"
    assert not model.path.exists()
    assert sorted(p.name for p in done.path.iterdir()) == sorted(old_bytes)
    assert all(old_bytes[p.name] != p.read_bytes() for p in done.path.iterdir())
    assert steps[-1] == sum(len(data) for data in _originals(awq).values())
    assert new_key.stored_bytes == sum(p.stat().st_size for p in done.path.iterdir())
    store.verify("tiny")
    assert _originals(store.export("tiny", tmp_path / "out")) == _originals(awq)
    assert store.orphans() == []


@pytest.mark.parametrize("damage", ["flip", "drop"])
def test_reencrypt_of_a_damaged_folder_leaves_it_as_it_was(store: ModelStore, awq: Path, damage: str) -> None:
    """A file that fails its tag or is missing: StoreIntegrityError, no new folder, the old one untouched."""
    model = store.import_awq_folder(awq, name="tiny")
    second = model.path / "1.aplm"
    if damage == "flip":
        data = bytearray(second.read_bytes())
        data[-20] ^= 1
        second.write_bytes(bytes(data))
    else:
        second.unlink()
    before = {p.name: p.read_bytes() for p in model.path.iterdir()}
    with pytest.raises(StoreIntegrityError):
        store.reencrypt("tiny")
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([".writers.lock", model.path.name])
    assert {p.name: p.read_bytes() for p in model.path.iterdir()} == before


@pytest.mark.parametrize("damage", ["flip", "swap", "drop", "manifest"])
def test_damaged_folder_fails_verify(store: ModelStore, awq: Path, damage: str) -> None:
    """A flipped bit, two files swapped, a missing file or a damaged manifest: an integrity error."""
    model = store.import_awq_folder(awq, name="tiny")
    first, second = model.path / "0.aplm", model.path / "1.aplm"
    if damage == "flip":
        data = bytearray(second.read_bytes())
        data[-20] ^= 1
        second.write_bytes(bytes(data))
    elif damage == "swap":
        one, two = first.read_bytes(), second.read_bytes()
        first.write_bytes(two)
        second.write_bytes(one)
    elif damage == "drop":
        second.unlink()
    else:
        (model.path / MANIFEST).write_bytes((model.path / MANIFEST).read_bytes()[:-1])
    with pytest.raises((StoreIntegrityError, FileNotFoundError)) as failed:
        store.verify("tiny")
    if damage != "drop":
        assert failed.type is StoreIntegrityError


def test_a_folder_that_is_not_awq_is_refused_and_leaves_nothing(store: ModelStore, awq: Path) -> None:
    """No AWQ quantization_config, or an import that fails midway: no files, no row."""
    config = json.loads((awq / "config.json").read_text())
    (awq / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ModelFileError, match="does not describe an AWQ model"):
        store.import_awq_folder(awq, name="tiny")
    (awq / "config.json").write_text(json.dumps(config))

    def interrupt(done: int) -> None:
        if done > 300:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_awq_folder(awq, name="tiny", progress=interrupt)
    assert store.list() == []
    assert store.orphans() == []
    assert [p.name for p in store.folder.iterdir()] == [".writers.lock"]


def test_cli_imports_verifies_exports_and_removes_a_folder(awq: Path, tmp_path: Path) -> None:
    """`appliance models import FOLDER --name N` and the other model commands, as an admin runs them."""
    imported = run_appliance("models", "import", str(awq), "--name", "tiny")
    assert imported.returncode == 0, imported.stderr
    assert "imported tiny version 1 (LlamaForCausalLM, AWQ) into the encrypted store" in imported.stdout
    verified = run_appliance("models", "verify", "tiny")
    assert (verified.returncode, verified.stdout) == (0, "tiny: ok\n"), verified.stderr
    exported = run_appliance("models", "export", "tiny", "--to", str(tmp_path / "back"))
    assert exported.returncode == 0, exported.stderr
    assert _originals(tmp_path / "back") == _originals(awq)
    assert run_appliance("models", "remove", "tiny").returncode == 0
    missing = run_appliance("models", "verify", "tiny")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ")


def test_memory_backed_folders_are_told_from_disk(tmp_path: Path) -> None:
    """Shared memory is tmpfs; a disk folder is refused as the place for plaintext; mounts are read right."""
    assert file_system_type(SHARED_MEMORY) == "tmpfs"
    assert private_memory_parent(tmp_path) == SHARED_MEMORY  # the test's folder is on a disk
    with pytest.raises(NoPrivateMemoryFolderError, match="refusing to decrypt model weights onto a disk"):
        private_memory_parent(tmp_path, fallback=tmp_path)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /run/my\\040appliance tmpfs rw 0 0\n"
        "/dev/vdb /run/my\\040appliance/disk xfs rw 0 0\n"
    )
    assert file_system_type(Path("/run/my appliance/run"), mounts) == "tmpfs"
    assert file_system_type(Path("/run/my appliance/disk/x"), mounts) == "xfs"
    assert file_system_type(Path("/var/lib"), mounts) == "ext4"


def _launch(model: ModelInfo, home: Path) -> Launch:
    """The launch the supervisor builds for a model the plan put on vLLM."""
    settings = Settings(home=home)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    plan = ModelPlan(name=model.name, engine="vllm", fits=True, reason="test")
    return Launch(model, plan, settings.run_dir / f"{model.name}.sock", settings)


def _fake_vllm(launch: Launch, report: Path, *, fail: bool = False) -> list[str]:
    """The vLLM command at the boundary the supervisor crosses: argv with the model folder and the socket."""
    argv = [sys.executable, "-m", "tests.appliance.store.fake_vllm", "--model", str(launch.model.path)]
    argv += ["--uds", str(launch.socket_path), "--served-model-name", launch.model.name]
    return [*argv, "--report", str(report), *(["--fail"] if fail else [])]


async def _until(condition: object, timeout_s: float = 20.0) -> float:
    """Poll `condition()` until true; returns the seconds it took."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _start_fake_vllm(
    store: ModelStore, awq: Path, home: Path, report: Path, *, fail: bool = False
) -> tuple[Launch, Path, asyncio.subprocess.Process]:
    """Import the AWQ folder and start the stand-in for vLLM on it as the supervisor would: (launch, the
    plaintext folder it was given, the process)."""
    launch = _launch(store.import_awq_folder(awq, name="tiny"), home)
    async with sealed_model_source(store)(launch) as (opened, fds):
        folder = opened.model.path
        assert folder.parent == SHARED_MEMORY
        assert folder.is_dir()
        process = await asyncio.create_subprocess_exec(*_fake_vllm(opened, report, fail=fail), pass_fds=fds)
    return launch, folder, process


async def test_vllm_gets_a_private_tmpfs_folder_removed_once_ready(
    store: ModelStore, awq: Path, appliance_home: Path, tmp_path: Path
) -> None:
    """vLLM reads the plaintext from a 0700 tmpfs folder; the folder is gone once vLLM answers ready."""
    report = tmp_path / "report.json"
    _, folder, process = await _start_fake_vllm(store, awq, appliance_home, report)
    try:
        await _until(lambda: not folder.exists())
        seen = json.loads(report.read_text())
        assert seen["folder"] == str(folder)
        assert seen["mode"] == 0o700
        assert seen["files"].keys() == _originals(awq).keys()
        assert process.returncode is None  # removed while the worker runs: it had loaded everything
    finally:
        process.terminate()
        await process.wait()
    leftovers = await asyncio.to_thread(lambda: list(SHARED_MEMORY.glob(f"model-{os.getpid()}-tiny-*")))
    assert leftovers == []


async def test_tmpfs_folder_goes_when_vllm_dies_before_ready(
    store: ModelStore, awq: Path, appliance_home: Path, tmp_path: Path
) -> None:
    """A worker that exits before ready (any death: the pipe's EOF) takes its folder with it at once."""
    report = tmp_path / "report.json"
    launch, folder, process = await _start_fake_vllm(store, awq, appliance_home, report, fail=True)
    assert await process.wait() == 3
    took = await _until(lambda: not folder.exists())
    assert took < launch.settings.workers.startup_timeout_s / 4  # not the start-up deadline: the exit
    assert json.loads(report.read_text())["folder"] == str(folder)


async def test_tmpfs_folder_goes_when_the_start_itself_fails(
    store: ModelStore, awq: Path, appliance_home: Path
) -> None:
    """If the process cannot even be started, the folder is removed before the error goes on."""
    model = store.import_awq_folder(awq, name="tiny")
    launch = _launch(model, appliance_home)
    folders: list[Path] = []

    async def start_a_missing_program() -> None:
        async with sealed_model_source(store)(launch) as (opened, _fds):
            folders.append(opened.model.path)
            await asyncio.create_subprocess_exec(str(appliance_home / "no-such-vllm"))

    with pytest.raises(FileNotFoundError):
        await start_a_missing_program()
    [folder] = folders
    assert folder.parent == SHARED_MEMORY
    assert not await asyncio.to_thread(folder.exists)


def test_plaintext_folders_of_a_killed_gateway_are_swept_at_the_next_start(tmp_path: Path) -> None:
    """A folder named for a pid that is gone is removed; one of a live gateway, or not ours by name, stays."""
    dead_pid = _exited_pid()
    run_dir, shared = tmp_path / "run", tmp_path / "shm"
    stale = shared / f"model-{dead_pid}-tiny-abc123"
    live = shared / f"model-{os.getpid()}-tiny-def456"
    older = run_dir / "model-tiny-ghi789"  # no pid in the name: not swept
    for folder in (stale, live, older):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"plaintext")
    assert sweep_stale_folders(run_dir, shared) == [stale]
    assert not stale.exists()
    assert live.exists()
    assert older.exists()


def _exited_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
