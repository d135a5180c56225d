"""`installer doctor` checks a real install; `installer uninstall` removes it, with or without the data."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from installer import errors
from installer.state import Prefix
from installer.uninstall import confirm_data_removal
from tests.installer.helpers import Recipe, make_bundle, run_installed_appliance, run_installer, snapshot

Keys = dict[str, tuple[Path, Path]]
WHEEL = "versions/1/bundle/wheels/fakeappliance-1.0-py3-none-any.whl"
SERVICE = "daemon"  # an existing unprivileged user: the tests create no account


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """A small real bundle of version 1 (the fake appliance wheel and one tiny model)."""
    return make_bundle(tmp_path_factory.mktemp("bundle"), keys["a"][0], Recipe(version=1))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, bundle: Path, keys: Keys) -> Path:
    """Version 1 really installed once (venv, pip, data, models) with one key in its registry."""
    prefix = tmp_path_factory.mktemp("installed") / "prefix"
    done = run_installer("install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1]))
    assert done.returncode == 0, done.stderr
    run_installed_appliance(prefix, "keys", "create", "--name", "kept")
    return prefix


@pytest.fixture
def prefix(installed: Path, tmp_path: Path) -> Path:
    """A copy of the installed prefix that a test may damage or uninstall."""
    copy = tmp_path / "prefix"
    shutil.copytree(installed, copy, symlinks=True)
    return copy


def _doctor(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    units = ("--unit-dir", str(prefix.parent / "units")) if "--unit-dir" not in extra else ()
    return run_installer("doctor", "--prefix", str(prefix), *units, *extra)


def _uninstall(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    units = ("--unit-dir", str(prefix.parent / "units")) if "--unit-dir" not in extra else ()
    return run_installer("uninstall", "--prefix", str(prefix), *units, *extra, stdin=subprocess.DEVNULL)


def _fails(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]


def test_doctor_on_a_fresh_install_is_all_ok(prefix: Path) -> None:
    """Every check of an untouched install is ok, one line each, and the exit code is 0."""
    done = _doctor(prefix)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines), lines
    names = {line.split(":")[0].removeprefix("ok ") for line in lines}
    assert {"state", "current", "files 1", "weights", "unit", "data", "key files", "code"} <= names
    assert "3 files match the manifest" in done.stdout


def test_doctor_names_each_changed_missing_and_extra_file(prefix: Path) -> None:
    """A flipped byte, a deleted member and a planted file are each a FAIL naming the file; exit 1."""
    wheel = prefix / WHEEL
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    (prefix / "versions/1/bundle/models/tiny/registry.json").unlink()
    (prefix / "versions/1/bundle/wheels/planted.whl").write_bytes(b"PK")
    done = _doctor(prefix)
    assert done.returncode == 1
    fails = _fails(done)
    assert f"FAIL file: {WHEEL}: changed (SHA-256 differs from the manifest)" in fails
    assert "FAIL file: versions/1/bundle/models/tiny/registry.json: missing" in fails
    assert "FAIL file: versions/1/bundle/wheels/planted.whl: extra (not in the manifest)" in fails
    assert len(fails) == 3, fails


def test_doctor_checks_the_shared_weights(prefix: Path) -> None:
    """Weights in PREFIX/models/<sha256>/ whose bytes no longer have that SHA-256 fail."""
    weights = next((prefix / "models").rglob("*.gguf"))
    weights.write_bytes(b"X" * weights.stat().st_size)
    done = _doctor(prefix)
    assert done.returncode == 1
    assert _fails(done) == [
        f"FAIL weights: {weights.relative_to(prefix)}: changed (SHA-256 differs from its folder's name)"
    ]


def test_doctor_fails_a_world_writable_data_dir_and_a_loose_key(prefix: Path) -> None:
    """PREFIX/data with o+w fails, and so does a store.key readable by others."""
    (prefix / "data").chmod(0o707)
    (prefix / "data" / "store.key").chmod(0o644)
    done = _doctor(prefix)
    assert done.returncode == 1
    fails = _fails(done)
    assert any(line.startswith("FAIL data: ") and "world-writable (mode 0707)" in line for line in fails)
    assert "FAIL key files: not 0600: store.key (mode 0644)" in fails


def test_doctor_fails_a_current_link_to_no_installed_version(prefix: Path) -> None:
    """`current` pointing at a version the state does not list is a FAIL."""
    Prefix(prefix).switch_current(7)
    done = _doctor(prefix)
    assert done.returncode == 1
    assert "FAIL current: points at version 7, which the state does not list as installed" in _fails(done)


def test_uninstall_keep_data_leaves_the_data_for_the_next_install(
    prefix: Path, bundle: Path, keys: Keys
) -> None:
    """--keep-data removes versions, current, weights and state, keeps data/ byte for byte (the registry
    with its key), and says so; a new install on it serves the same key."""
    data = snapshot(prefix / "data")
    done = _uninstall(prefix, "--keep-data")
    assert done.returncode == 0, done.stderr
    assert f"removed: {prefix / 'versions' / '1'}" in done.stdout
    assert f"kept: {prefix / 'data'}" in done.stdout
    assert sorted(p.name for p in prefix.iterdir()) == ["data"]
    assert snapshot(prefix / "data") == data
    assert (prefix / "data" / "registry.db").is_file()
    again = run_installer("install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1]))
    assert again.returncode == 0, again.stderr
    assert run_installed_appliance(prefix, "keys", "list").split() == ["kept"]


def test_uninstall_without_yes_and_no_terminal_is_refused(prefix: Path) -> None:
    """Removing the data needs a confirmation: no terminal and no --yes is one line, exit 2, and nothing
    is stopped or removed."""
    before = snapshot(prefix)
    done = _uninstall(prefix)
    assert done.returncode == errors.UsageError.exit_code
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--yes" in done.stderr
    assert "--keep-data" in done.stderr
    assert snapshot(prefix) == before


def test_a_declined_confirmation_removes_nothing(prefix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a terminal, any answer but `yes` cancels."""
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(errors.UsageError, match="cancelled"):
        confirm_data_removal(Prefix(prefix), yes=False, ask=lambda _prompt: "y")
    confirm_data_removal(Prefix(prefix), yes=False, ask=lambda _prompt: "yes")


def test_uninstall_yes_stops_the_process_and_empties_the_prefix(prefix: Path) -> None:
    """--yes removes everything, the prefix folder included, after stopping the process of the pid file."""
    marker = str(prefix / "current" / "venv" / "bin" / "appliance")  # its command line names the prefix
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    try:
        (prefix / "data" / "appliance.pid").write_text(f"{child.pid}\n")
        done = _uninstall(prefix, "--yes")
        assert done.returncode == 0, done.stderr
        assert child.wait(timeout=60) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    assert f"stop: process {child.pid} stopped" in done.stdout
    assert f"removed: {prefix / 'data'}" in done.stdout
    assert not prefix.exists()


def test_uninstall_leaves_a_stranger_process_alone(prefix: Path) -> None:
    """A pid file naming a process that is not this prefix's (a reused pid) stops nothing."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (prefix / "data" / "appliance.pid").write_text(f"{child.pid}\n")
        done = _uninstall(prefix, "--keep-data")
        assert done.returncode == 0, done.stderr
        assert "is not this appliance's; left alone" in done.stdout
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_uninstall_and_doctor_refuse_a_folder_that_is_no_prefix(tmp_path: Path) -> None:
    """No state.json: one line, exit 50, and the folder is exactly as it was."""
    folder = tmp_path / "not-a-prefix"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "precious.txt").write_text("keep me")
    (folder / "versions").mkdir()
    before = snapshot(folder)
    for done in (_uninstall(folder, "--yes"), _doctor(folder)):
        assert done.returncode == errors.StateError.exit_code
        assert len(done.stderr.strip().splitlines()) == 1
        assert "is not an appliance prefix" in done.stderr
        assert snapshot(folder) == before


def test_doctor_and_uninstall_with_a_unit(tmp_path: Path, bundle: Path, keys: Keys) -> None:
    """With --systemd: doctor finds the installer's units (and fails an edited one), says systemd's state
    could not be read where it does not run; uninstall removes both units."""
    prefix, units = tmp_path / "p", tmp_path / "units"
    units.mkdir()
    done = run_installer(
        *("install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1])),
        *("--systemd", "--unit-dir", str(units), "--service-user", SERVICE, "--allow-ip", "10.0.0.0/8"),
    )
    assert done.returncode == 0, done.stderr
    checked = _doctor(prefix, "--unit-dir", str(units))
    unit, socket = units / "appliance.service", units / "appliance.socket"
    assert f"ok unit: {unit} is the installer's (service user {SERVICE})" in checked.stdout
    assert f"ok socket unit: {socket} is the installer's (listens on 127.0.0.1:8080)" in checked.stdout
    if os.geteuid() == 0:  # the install gave the data to the service user and kept the code root's
        assert checked.returncode == 0, checked.stdout
        assert f"owned by {SERVICE}" in checked.stdout
        assert "root's, not writable by the service user" in checked.stdout
        os.chown(prefix / "versions" / "1" / "venv", pwd.getpwnam(SERVICE).pw_uid, 0)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=no"))
    checked = _doctor(prefix, "--unit-dir", str(units))
    assert checked.returncode == 1
    fails = _fails(checked)
    assert any(
        line.startswith(f"FAIL unit: {unit} differs") and "NoNewPrivileges=no" in line for line in fails
    )
    if os.geteuid() == 0:
        assert any(line.startswith("FAIL code: 1 paths") and "versions/1/venv" in line for line in fails)
    gone = _uninstall(prefix, "--yes", "--unit-dir", str(units))
    assert gone.returncode == 0, gone.stderr
    assert f"removed: {unit}" in gone.stdout
    assert f"removed: {socket}" in gone.stdout
    assert not unit.exists()
    assert not socket.exists()
    assert not prefix.exists()


def test_a_large_file_is_hashed_in_chunks_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """From BIG_FILE on, hashing shows progress on stderr; the digest is the file's, and a second path to
    the same inode (weights hard-linked into a bundle) is not read again."""
    import hashlib

    from installer import doctor

    monkeypatch.setattr(doctor, "BIG_FILE", 1024)
    monkeypatch.setattr(doctor, "CHUNK", 1000)
    big = tmp_path / "big.gguf"
    big.write_bytes(bytes(range(256)) * 40)
    checks = doctor.Checks(lambda _line: None)
    assert checks.sha256(big, big.stat()) == hashlib.sha256(big.read_bytes()).hexdigest()
    assert "sha256" in capsys.readouterr().err
    os.link(big, tmp_path / "link.gguf")
    assert checks.sha256(tmp_path / "link.gguf", (tmp_path / "link.gguf").stat()) == checks.sha256(
        big, big.stat()
    )
    assert capsys.readouterr().err == ""
