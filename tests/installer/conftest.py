"""Keys generated per session, a prefix where version 1 is installed (without pip, for speed), and the real
CPU bundle, built once per session for the end-to-end tests that need it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from installer.build import REPO
from installer.crypto import load_public_key
from installer.pack import generate_key_pair
from installer.state import InstalledVersion, InstallState, Prefix
from installer.trust import TrustedKeys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Three Ed25519 key pairs: `a` (trusted), `b` (for rotation) and `evil` (never trusted)."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key_pair(folder, name) for name in ("a", "b", "evil")}


@pytest.fixture
def installed_prefix(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    """A prefix whose state trusts key `a` and whose current version is 1."""
    prefix = Prefix(tmp_path / "prefix")
    prefix.version_dir(1).mkdir(parents=True)
    prefix.data.mkdir(mode=0o700)
    (prefix.data / "settings.toml").write_text("# version 1\n")
    trust = TrustedKeys().with_keys([load_public_key(keys["a"][1].read_text())])
    state = InstallState(trust, [InstalledVersion(1, "cpu", "0" * 64, 0)])
    state.record("install", "success", "version 1")
    prefix.save(state)
    prefix.switch_current(1)
    return prefix.root


@dataclass(frozen=True)
class CpuBundle:
    """The real CPU bundle (version 7: the project's wheels, the embedded models, installer.pyz inside),
    the installer.pyz an admin carries beside it, and the key pair that signed it."""

    bundle: Path
    installer: Path
    private: Path
    public: Path


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> CpuBundle:
    """Built with `installer.build bundle --profile cpu` once: it takes minutes, so every test shares it."""
    work = tmp_path_factory.mktemp("cpu-bundle")
    private, public = generate_key_pair(work / "keys", "release")
    dist = work / "dist"
    build = [sys.executable, "-m", "installer.build", "bundle", "--profile", "cpu", "--key", str(private)]
    built = subprocess.run(
        [*build, "--version", "7", "--out", str(dist)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "members:" in built.stdout
    return CpuBundle(dist / "appliance-cpu-7.bundle", dist / "installer.pyz", private, public)
