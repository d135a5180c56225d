"""Fixtures of the store tests: a real registry and a store with a chunk size small enough to span chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.registry.registry import Registry, open_registry
from appliance.store.store import ModelStore
from tests.gguf_files import write_tiny_gguf

CHUNK = 64


@pytest.fixture
def registry(appliance_home: Path) -> Registry:
    """A real, migrated registry in the test's home."""
    return open_registry(appliance_home / "registry.db")


@pytest.fixture
def store(appliance_home: Path, registry: Registry) -> ModelStore:
    """A store with a small chunk size, so tiny files span several chunks."""
    return ModelStore(appliance_home, registry, chunk_size=CHUNK)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A valid GGUF of a few hundred bytes."""
    return write_tiny_gguf(tmp_path / "tiny.gguf")
