"""Offline installs of small bundles (a fake appliance wheel, so pip runs for real but quickly)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from installer import errors
from installer.state import Prefix
from tests.installer.helpers import (
    REPO,
    UNSHARE,
    Recipe,
    make_bundle,
    run_installed_appliance,
    run_installer,
    snapshot,
)

Keys = dict[str, tuple[Path, Path]]
SERVICE = "daemon"


def _install(prefix: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_installer("install", str(bundle), "--prefix", str(prefix), *extra)


@pytest.fixture
def v1(tmp_path: Path, keys: Keys) -> Path:
    """A prefix with version 1 really installed (venv, pip, data, models)."""
    prefix = tmp_path / "prefix"
    bundle = make_bundle(tmp_path / "w1", keys["a"][0], Recipe(version=1))
    done = _install(prefix, bundle, "--trust", str(keys["a"][1]))
    assert done.returncode == 0, done.stderr
    return prefix


def test_first_install_pins_the_key_and_serves(v1: Path, keys: Keys) -> None:
    """A first install prints the key's fingerprint, registers the model, and the version serves."""
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    assert Prefix(v1).current() == 1
    registry = (v1 / "data" / "registry.txt").read_text()
    assert registry.startswith("tiny ")
    assert str(v1 / "models") in registry
    status = run_installer("status", "--prefix", str(v1))
    assert "current: 1" in status.stdout
    assert "install success" in status.stdout
    from installer.crypto import load_public_key

    assert load_public_key(keys["a"][1].read_text()).fingerprint in status.stdout


def test_first_install_needs_a_pinned_key(tmp_path: Path, keys: Keys) -> None:
    """Without --trust there is nothing to verify against: refused, nothing written."""
    bundle = make_bundle(tmp_path / "w", keys["a"][0], Recipe(version=1))
    done = _install(tmp_path / "prefix", bundle)
    assert done.returncode == errors.UsageError.exit_code
    assert not (tmp_path / "prefix").exists()


def test_rollback_then_same_version_again(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """Install 2, roll back to 1 (it serves), then install 2 again."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    assert _install(v1, bundle).returncode == 0
    assert run_installed_appliance(v1, "serve") == "serving version 2"
    done = run_installer("rollback", "--prefix", str(v1))
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    assert _install(v1, bundle).returncode == 0
    assert run_installed_appliance(v1, "serve") == "serving version 2"
    assert run_installer("rollback", "--prefix", str(v1)).returncode == 0
    assert run_installer("rollback", "--prefix", str(v1)).returncode == errors.StateError.exit_code


def test_after_a_rollback_an_older_bundle_than_ever_installed_is_refused(
    v1: Path, tmp_path: Path, keys: Keys
) -> None:
    """Install 3, roll back to 1: a signed bundle of version 2 is older than 3, so it is refused unless the
    admin allows a downgrade (rollback protection holds against the highest version, not just the current)."""
    assert _install(v1, make_bundle(tmp_path / "w3", keys["a"][0], Recipe(version=3))).returncode == 0
    assert run_installer("rollback", "--prefix", str(v1)).returncode == 0
    before = snapshot(v1)
    older = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    done = _install(v1, older)
    assert done.returncode == errors.DowngradeError.exit_code
    assert "older than version 3" in done.stderr
    assert snapshot(v1) == before
    assert _install(v1, older, "--allow-downgrade").returncode == 0
    assert run_installed_appliance(v1, "serve") == "serving version 2"


def test_failed_step_leaves_previous_version(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """A pip failure (no appliance wheel in the bundle) keeps version 1 current, removes version 2."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2, fake_app=False))
    done = _install(v1, bundle)
    assert done.returncode == errors.InstallStepError.exit_code, done.stderr
    assert "failed" in done.stderr.splitlines()[-1]
    assert Prefix(v1).current() == 1
    assert not (v1 / "versions" / "2").exists()
    assert run_installed_appliance(v1, "serve") == "serving version 1"


# Steps that last long enough (each starts processes) for the kill to land inside them; the instants
# around the final rename are covered deterministically by the crash-state tests below.
@pytest.mark.parametrize("step", ["extract", "venv", "pip", "data", "migrations"])
def test_kill_9_during_install(step: str, v1: Path, tmp_path: Path, keys: Keys) -> None:
    """kill -9 as the installer reports `step`: version 1 stays current and serves; a rerun succeeds."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    argv = [sys.executable, "-m", "installer", "install", str(bundle), "--prefix", str(v1)]
    process = subprocess.Popen(
        ["unshare", "-n", *argv] if UNSHARE else argv, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.strip() == f"step: {step}":
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert Prefix(v1).current() == 1
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    done = _install(v1, bundle)
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 2"


def test_key_rotation_and_revocation(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """Bundle 2 (signed by a) carries root version 1: offline root r, signing key b, a revoked; signed by
    a (the pinned 1-of-1 root), r and b. Then a is refused, b accepted."""
    from installer.crypto import load_public_key
    from installer.pack import generate_key_pair
    from installer.rootsign import new_root, sign_root

    root_key, root_pub = generate_key_pair(tmp_path / "root", "r")
    a, b = (load_public_key(keys[k][1].read_text()) for k in ("a", "b"))
    document = new_root(1, [root_pub], 1, [keys["b"][1]], [a.key_id], None)
    for private in (keys["a"][0], root_key, keys["b"][0]):
        document = sign_root(document, private)
    files = {"trust/root.json": ("trust", document.to_bytes())}
    assert (
        _install(v1, make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2, files=files))).returncode
        == 0
    )
    state = json.loads((v1 / "state.json").read_text())
    assert state["trust"]["revoked"] == [a.key_id]
    assert state["trust"]["keys"] == [b.pem()]
    assert state["trust"]["root"]["signed"]["root_keys"] == [root_pub.read_text()]
    before = snapshot(v1)
    done = _install(v1, make_bundle(tmp_path / "w3a", keys["a"][0], Recipe(version=3)))
    assert done.returncode == errors.RevokedKeyError.exit_code
    assert "revoked key" in done.stderr
    assert snapshot(v1) == before
    assert _install(v1, make_bundle(tmp_path / "w3b", keys["b"][0], Recipe(version=3))).returncode == 0


def test_systemd_unit(tmp_path: Path, keys: Keys) -> None:
    """--systemd writes a hardened unit pointing at `current` and the data directory, and the socket unit it
    is served on, both checked by systemd-analyze where present; as root, the data goes to the service user
    and nothing else does."""
    bundle = make_bundle(tmp_path / "w", keys["a"][0], Recipe(version=1))
    units, prefix = tmp_path / "units", tmp_path / "p"
    units.mkdir()
    # An existing unprivileged user, so that the test creates no account on the machine (not `nobody`,
    # which systemd refuses: files it owns belong to every other service that runs as nobody).
    user = "--service-user", SERVICE
    done = _install(
        prefix, bundle, "--trust", str(keys["a"][1]), "--systemd", "--unit-dir", str(units), *user
    )
    assert done.returncode == 0, done.stderr
    unit = (units / "appliance.service").read_text()
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "IPAddressDeny=any"):
        assert directive in unit
    assert f"ExecStart={prefix / 'current'}/venv/bin/appliance serve" in unit
    assert f"Environment=APPLIANCE_HOME={prefix / 'data'}\n" in unit
    assert f"User={SERVICE}\n" in unit
    assert "Requires=appliance.socket\n" in unit
    # Beside it, the socket systemd keeps open across restarts: the [server] address (defaults here).
    socket = (units / "appliance.socket").read_text()
    assert "ListenStream=127.0.0.1:8080\n" in socket
    assert "IPAddressDeny=any\n" in socket
    assert "systemd-analyze" in done.stderr
    if os.geteuid() == 0:
        service = pwd.getpwnam(SERVICE)
        data = (prefix / "data").stat()
        assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (service.pw_uid, 0o700)
        assert all(p.stat().st_uid == service.pw_uid for p in (prefix / "data").rglob("*"))
        code = [prefix / "versions", *(prefix / "versions").rglob("*"), *(prefix / "models").rglob("*")]
        assert all(p.lstat().st_uid == 0 for p in code)
        assert not any(p.lstat().st_mode & 0o022 for p in code if not p.is_symlink())
        weights = next((prefix / "models").rglob("*.gguf")).stat()
        assert (weights.st_gid, stat.S_IMODE(weights.st_mode)) == (service.pw_gid, 0o640)


def test_allow_downgrade_is_explicit_and_audited(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """With --allow-downgrade the admin may go back to a lower version; the history says so."""
    assert _install(v1, make_bundle(tmp_path / "w3", keys["a"][0], Recipe(version=3))).returncode == 0
    lower = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    assert _install(v1, lower).returncode == errors.DowngradeError.exit_code
    done = _install(v1, lower, "--allow-downgrade")
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 2"
    history = json.loads((v1 / "state.json").read_text())["history"]
    assert "downgrade allowed by the admin" in history[-1]["detail"]


def test_systemd_check_rejects_an_ignored_directive(tmp_path: Path) -> None:
    """A unit line systemd would ignore (a hardening option it does not know) fails the install step."""
    from installer.systemd import check_unit

    unit = tmp_path / "appliance-check.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectEverything=yes\n")
    with pytest.raises(errors.InstallStepError, match="systemd-analyze rejects the unit"):
        check_unit(unit)


def test_crash_between_state_and_switch(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """On-disk state of a kill after state.json listed version 2 but before `current` moved: 1 serves."""
    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    assert _install(v1, bundle).returncode == 0
    Prefix(v1).switch_current(1)  # exactly what the disk holds if the rename never happened
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    assert "current: 1" in run_installer("status", "--prefix", str(v1)).stdout
    done = _install(v1, bundle)
    assert done.returncode == 0, done.stderr
    assert run_installed_appliance(v1, "serve") == "serving version 2"


def test_debris_of_a_killed_install_is_removed(v1: Path, tmp_path: Path, keys: Keys) -> None:
    """A half-made version folder and temp files (a kill mid-build) go on the next run; 1 stays current."""
    half = v1 / "versions" / "2" / "bundle" / "wheels"
    half.mkdir(parents=True)
    (half / "partial.whl").write_bytes(b"PK")
    (v1 / ".state.json.abc.tmp").write_text("{")
    (v1 / ".current.99.tmp").symlink_to("versions/2")
    assert run_installed_appliance(v1, "serve") == "serving version 1"
    done = _install(v1, make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2)))
    assert done.returncode == 0, done.stderr
    assert "removed debris of an interrupted install" in done.stderr
    assert not (v1 / ".state.json.abc.tmp").exists()
    assert not (v1 / ".current.99.tmp").is_symlink()
    assert run_installed_appliance(v1, "serve") == "serving version 2"


def test_not_enough_space_is_refused_before_writing(
    installed_prefix: Path, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk too small for the bundle is refused up front: one line, nothing in the prefix changes."""
    import shutil as shutil_module

    from installer.crypto import CryptographyVerifier
    from installer.install import Options, install

    bundle = make_bundle(tmp_path / "w2", keys["a"][0], Recipe(version=2))
    before = snapshot(installed_prefix)
    full = type(shutil_module.disk_usage(tmp_path))(total=10**9, used=10**9 - 100, free=100)
    monkeypatch.setattr("installer.install.shutil.disk_usage", lambda _path: full)
    with pytest.raises(errors.InstallStepError, match="not enough space"):
        install(Options(bundle, installed_prefix), CryptographyVerifier(), lambda _line: None)
    assert snapshot(installed_prefix) == before
