"""Issue 17 item 7: passphrase KEKs cost scrypt N=2^17, older stores still unlock, short passphrases fail.

Each test derives a handful of keys at the real cost (about half a second each): no test-only cost override.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import cast

import pytest

from appliance.errors import StoreIntegrityError
from appliance.registry.registry import Registry, open_registry
from appliance.registry.store_keys import KekRecord
from appliance.store.gate import StoreGate
from appliance.store.keys import (
    LEGACY_SCRYPT_N,
    MIN_PASSPHRASE_CHARS,
    SCRYPT_N,
    WeakPassphraseError,
    passphrase_kek,
    read_key_file,
    scrypt_cost,
    unwrap_key,
    wrap_key,
)
from appliance.store.store import ModelStore
from appliance.supervisor import Supervisor
from tests.e2e.server import APPLIANCE
from tests.gguf_files import write_tiny_gguf

PASSPHRASE = "correct horse battery staple"
LEGACY = "an old passphrase, 2^15"


@pytest.fixture
def registry(appliance_home: Path) -> Registry:
    """A real, migrated registry in the test's home."""
    return open_registry(appliance_home / "registry.db")


@pytest.fixture
def store(appliance_home: Path, registry: Registry) -> ModelStore:
    """A key-file store with chunks small enough that a tiny file spans several."""
    return ModelStore(appliance_home, registry, chunk_size=64)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A valid GGUF of a few hundred bytes."""
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def _registry_state(home: Path, registry: Registry) -> tuple[object, ...]:
    """Everything a refused rotation must leave as it was: KEK record, key rows, key file, store files."""
    key_file = home / "store.key"
    files = sorted((p.name, p.read_bytes()) for p in (home / "store").glob("*.aplm"))
    key = key_file.read_bytes() if key_file.exists() else None
    return registry.store_keys.kek(), registry.store_keys.all(), key, files


def _make_legacy(home: Path, registry: Registry) -> None:
    """Make a key-file store a passphrase store as the appliance made them before: N=2^15, not recorded."""
    old = read_key_file(home / "store.key")
    salt = secrets.token_bytes(16)
    legacy = passphrase_kek(LEGACY, salt, LEGACY_SCRYPT_N)
    rewrapped = {
        key.model_id: wrap_key(legacy, unwrap_key(old, key.wrapped_key, what="test"))
        for key in registry.store_keys.all()
    }
    registry.store_keys.set_kek(KekRecord(legacy.fingerprint, "passphrase", salt, None), rewrapped)
    (home / "store.key").unlink()


def test_a_new_passphrase_is_derived_at_n_2_17_and_the_cost_is_recorded(
    store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """The recorded N is 2^17 and the fingerprint is that of scrypt at N=2^17, r=8, p=1."""
    assert SCRYPT_N >= 2**17
    store.import_gguf(tiny, name="tiny")
    store.rotate_key(PASSPHRASE)
    record = registry.store_keys.kek()
    assert record is not None
    assert record.scrypt_salt is not None
    assert record.scrypt_n == SCRYPT_N
    assert passphrase_kek(PASSPHRASE, record.scrypt_salt, 2**17).fingerprint == record.fingerprint


def test_a_store_made_at_the_old_cost_unlocks_and_the_next_rotation_upgrades_it(
    appliance_home: Path, store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """A NULL scrypt_n means 2^15: the old passphrase opens the store; a rotation records 2^17."""
    store.import_gguf(tiny, name="tiny")
    _make_legacy(appliance_home, registry)
    legacy_store = ModelStore(appliance_home, registry, passphrase=LEGACY)
    legacy_store.verify("tiny")
    legacy_store.rotate_key(PASSPHRASE)
    record = registry.store_keys.kek()
    assert record is not None
    assert record.scrypt_n == SCRYPT_N
    ModelStore(appliance_home, registry, passphrase=PASSPHRASE).verify("tiny")


class _NoWorkers:
    """Just enough of a supervisor for StoreGate.unlock: no workers to start."""

    workers: dict[str, object] = {}  # noqa: RUF012 - read-only here

    async def start(self, names: list[str]) -> None:
        """Nothing to start."""


async def test_the_gateway_unlocks_a_store_made_at_the_old_cost(
    appliance_home: Path, store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """POST /admin/store/unlock's path: the gate derives at the recorded cost, so an old store unlocks."""
    store.import_gguf(tiny, name="tiny")
    _make_legacy(appliance_home, registry)
    gate = StoreGate(appliance_home, registry)
    assert gate.locked
    await gate.unlock(LEGACY, cast("Supervisor", _NoWorkers()))
    assert not gate.locked
    gate.store().verify("tiny")


def test_a_short_new_passphrase_is_refused_and_nothing_changes(
    appliance_home: Path, store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """Eleven characters: WeakPassphraseError before anything is read or written."""
    store.import_gguf(tiny, name="tiny")
    before = _registry_state(appliance_home, registry)
    with pytest.raises(WeakPassphraseError, match=f"at least {MIN_PASSPHRASE_CHARS} characters"):
        store.rotate_key("x" * (MIN_PASSPHRASE_CHARS - 1))
    assert _registry_state(appliance_home, registry) == before
    store.verify("tiny")


def test_the_cli_refuses_a_short_passphrase_with_one_line(
    appliance_home: Path, store: ModelStore, registry: Registry, tiny: Path
) -> None:
    """`store rotate-key --passphrase` with a short one: exit 1, one `error:` line, the store untouched."""
    store.import_gguf(tiny, name="tiny")
    before = _registry_state(appliance_home, registry)
    environment = os.environ | {
        "APPLIANCE_HOME": str(appliance_home),
        "APPLIANCE_STORE_NEW_PASSPHRASE": "short",
    }
    done = subprocess.run(
        [APPLIANCE, "store", "rotate-key", "--passphrase"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: the new store passphrase is too short")
    assert "Traceback" not in done.stderr
    assert _registry_state(appliance_home, registry) == before


def test_a_recorded_cost_out_of_range_is_refused_before_any_derivation() -> None:
    """NULL reads as 2^15; a tampered N (not a power of two, below 2^15, above 2^20) is an integrity error."""
    assert scrypt_cost(None) == LEGACY_SCRYPT_N
    assert scrypt_cost(SCRYPT_N) == SCRYPT_N
    for bad in (3 * 2**15, 2**14, 2**30):
        with pytest.raises(StoreIntegrityError, match="invalid scrypt cost"):
            scrypt_cost(bad)
