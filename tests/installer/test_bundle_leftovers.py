"""A model bundle's plaintext weights are on disk only while an import runs: an import that is killed leaves
its unpacked folder only until the next store open or gateway start, one that is stopped removes it itself,
and a running import's folder is never taken for a leftover."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from appliance.store.staging import FOLDER_PREFIX, staging_folder
from tests.api.console import APPLIANCE, run_appliance
from tests.api.test_console_gpu import gateway_app
from tests.gguf_files import write_tiny_gguf
from tests.installer.test_model_bundle import build_model_bundle

Keys = dict[str, tuple[Path, Path]]
WAIT_STEPS = 12_000  # of 5 ms: a bound on waiting for the import to get that far, not a timing assertion


def _big_gguf(path: Path) -> Path:
    """A valid GGUF of 128 MB of zeros: unpacking and encrypting it takes long enough to be caught at it."""
    return write_tiny_gguf(path, rows=8_000_000)


def _leftovers(home: Path) -> list[Path]:
    return sorted(home.glob(f"{FOLDER_PREFIX}*")) if home.is_dir() else []


def _import_caught_unpacking(home: Path, bundle: Path, key: Path) -> subprocess.Popen[bytes]:
    """`appliance models import-bundle` in a child, returned once its plaintext weights are on disk."""
    child = subprocess.Popen(
        [str(APPLIANCE), "models", "import-bundle", str(bundle), "--trust", str(key)],
        env=os.environ | {"NO_COLOR": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(WAIT_STEPS):
        if any(home.glob(f"{FOLDER_PREFIX}*/bundle/models/big/big.gguf")) or child.poll() is not None:
            break
        time.sleep(0.005)
    assert child.poll() is None, "the import ended before its weights were unpacked"
    return child


@pytest.fixture
def big_bundle(tmp_path: Path, keys: Keys) -> Path:
    """A model bundle of the 128 MB GGUF as `big`, signed by key `a`."""
    return build_model_bundle(
        tmp_path / "dist", keys["a"][0], "--model", str(_big_gguf(tmp_path / "big.gguf"))
    )


def test_a_killed_import_leaves_plaintext_only_until_the_next_store_open(
    appliance_home: Path, big_bundle: Path, keys: Keys
) -> None:
    """SIGKILL mid-import: the unpacked folder (plaintext) is left; `appliance store list`, the next open
    of the store, removes it, and a new import of the same bundle then succeeds with nothing left."""
    child = _import_caught_unpacking(appliance_home, big_bundle, keys["a"][1])
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    [left] = _leftovers(appliance_home)
    assert (left / "bundle" / "models" / "big" / "big.gguf").is_file()
    listed = run_appliance("store", "list")
    assert listed.returncode == 0, listed.stderr
    assert _leftovers(appliance_home) == []
    again = run_appliance("models", "import-bundle", str(big_bundle), "--trust", str(keys["a"][1]))
    assert _leftovers(appliance_home) == []
    assert again.returncode == 0, again.stderr


def test_a_stopped_import_removes_its_plaintext_itself(
    appliance_home: Path, big_bundle: Path, keys: Keys
) -> None:
    """SIGTERM mid-import (systemd's stop, a shell's kill): the import ends and its folder is gone."""
    child = _import_caught_unpacking(appliance_home, big_bundle, keys["a"][1])
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) != 0
    assert _leftovers(appliance_home) == []


def test_a_running_import_keeps_its_folder(appliance_home: Path) -> None:
    """While an import holds its folder (here, this process), another process's store open leaves it."""
    with staging_folder(appliance_home) as folder:
        (folder / "weights.gguf").write_bytes(b"GGUF plaintext")
        listed = run_appliance("store", "list")
        assert listed.returncode == 0, listed.stderr
        assert _leftovers(appliance_home) == [folder]
    assert _leftovers(appliance_home) == []


async def test_the_gateway_start_removes_a_killed_imports_plaintext(appliance_home: Path) -> None:
    """A leftover folder in the home is gone once the gateway has started (its lifespan ran)."""
    app, _ = gateway_app(appliance_home)
    left = appliance_home / f"{FOLDER_PREFIX}killed"
    (left / "bundle" / "models" / "big").mkdir(parents=True)
    (left / "bundle" / "models" / "big" / "big.gguf").write_bytes(b"GGUF plaintext")
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert _leftovers(appliance_home) == []
