"""`install --start`: one command from a signed bundle to a serving box; then start, stop and status.

The bundle's fake appliance really listens (helpers.fake_wheel with `serves`): the installer starts it as a
supervised background process (systemd is not PID 1 here, and no unit is written), waits for its
/health/ready with the admin key it created, and the curl line it prints is run as printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from installer import errors
from installer.state import Prefix
from tests.installer.helpers import Recipe, make_bundle, run_installed_appliance, run_installer

Keys = dict[str, tuple[Path, Path]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _bundle(
    work: Path,
    key: Path,
    version: int,
    port: int,
    serves: bool | str = True,
    revisions: tuple[str, ...] = ("0001",),
) -> Path:
    """A bundle whose fake appliance serves on `port` (its settings.toml becomes the data's)."""
    settings = f'[server]\nhost = "127.0.0.1"\nport = {port}\n'.encode()
    files = {"config/settings.toml": ("config", settings)}
    recipe = Recipe(version=version, serves=serves, files=files, revisions=revisions)
    return make_bundle(work, key, recipe, name=f"v{version}")


def _installer(*args: str) -> subprocess.CompletedProcess[str]:
    # In this network namespace: what it starts must be reachable from the test.
    return run_installer(*args, offline=False)


def _curl(stdout: str) -> str:
    """The printed curl line, run as an admin would paste it; the reply's message."""
    line = next(line for line in stdout.splitlines() if line.startswith("curl "))
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True, timeout=60)
    content: str = json.loads(done.stdout)["choices"][0]["message"]["content"]
    return content


def _stop_leftover(prefix: Path) -> None:
    """After the tests: nothing they started keeps running, even if `stop` was never reached or failed
    (the socket holder and its appliance each have a session of their own)."""
    _installer("stop", "--prefix", str(prefix))
    for record in ("appliance.json", "child.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pid = json.loads((prefix / "run" / record).read_text())["pid"]
            os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Box:
    """A prefix that `install --start` made serve."""

    prefix: Path
    port: int
    work: Path
    installed: subprocess.CompletedProcess[str]

    def admin_key(self) -> str:
        """The admin key file's content."""
        return (self.prefix / "data" / "admin.key").read_text().strip()

    def status(self) -> str:
        """`status`'s service line."""
        done = _installer("status", "--prefix", str(self.prefix))
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if line.startswith("service: "))


def install_started(work: Path, keys: Keys) -> Box:
    """Version 1, signed with key `a`, installed into `work/prefix` with `install --start` on a free port."""
    port = _free_port()
    bundle = _bundle(work, keys["a"][0], 1, port)
    prefix = work / "prefix"
    done = _installer(
        "install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1]), "--start"
    )
    return Box(prefix, port, work, done)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Box]:
    """Version 1 installed with `install --start` (one appliance start for the module's first tests)."""
    started = install_started(tmp_path_factory.mktemp("start"), keys)
    try:
        yield started
    finally:
        _stop_leftover(started.prefix)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_install_start_serves_and_its_curl_line_answers(box: Box) -> None:
    """One command: installed, an admin key file (0600, ours) shown once, ready, and a curl that answers."""
    assert box.installed.returncode == 0, box.installed.stderr
    key_file = box.prefix / "data" / "admin.key"
    assert f"admin key (shown once; kept in {key_file}): {box.admin_key()}\n" in box.installed.stdout
    info = key_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.getuid())
    assert f"ready: http://127.0.0.1:{box.port}\n" in box.installed.stdout
    assert "waiting up to 180s" in box.installed.stderr
    assert f"log {box.prefix / 'run' / 'appliance.log'}" in box.installed.stderr
    assert '"model":"tiny"' in box.installed.stdout
    assert _curl(box.installed.stdout) == "hello from version 1"


def test_status_shows_the_running_version_and_its_health(box: Box) -> None:
    """`status` names the supervised pid, the version it runs, and that it is ready."""
    pid = json.loads((box.prefix / "run" / "appliance.json").read_text())["pid"]
    assert box.status() == (
        f"service: running (supervised), pid {pid}, version 1, ready at http://127.0.0.1:{box.port}"
    )
    done = _installer("status", "--json", "--prefix", str(box.prefix))
    service = json.loads(done.stdout)["service"]
    assert (service["state"], service["version"], service["health"]) == ("running", 1, "ready")


def test_start_again_keeps_the_key_and_the_process(box: Box) -> None:
    """`start` on a running service: the same process, the same key file, no second admin key."""
    before, record = box.admin_key(), (box.prefix / "run" / "appliance.json").read_text()
    done = _installer("start", "--prefix", str(box.prefix))
    assert done.returncode == 0, done.stderr
    assert "already running: version 1" in done.stderr
    assert f"admin key: {box.prefix / 'data' / 'admin.key'}\n" in done.stdout
    assert "shown once" not in done.stdout
    assert box.admin_key() == before
    assert (box.prefix / "run" / "appliance.json").read_text() == record
    assert run_installed_appliance(box.prefix, "keys", "list").split() == ["admin"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_upgrade_with_start_restarts_on_the_new_version_with_the_same_key(box: Box, keys: Keys) -> None:
    """`install --start` of version 2 while 1 serves: 2 serves, with the admin key of the first install."""
    before = box.admin_key()
    bundle = _bundle(box.work, keys["a"][0], 2, box.port)
    done = _installer("install", str(bundle), "--prefix", str(box.prefix), "--start")
    assert done.returncode == 0, done.stderr
    assert done.stderr.index("stopping version 1") < done.stderr.index("step: data")  # drained first
    assert box.admin_key() == before
    assert _curl(done.stdout) == "hello from version 2"
    assert ", version 2, ready at " in box.status()
    assert run_installed_appliance(box.prefix, "keys", "list").split() == ["admin"]


def test_stop_closes_the_port_and_start_serves_again(box: Box) -> None:
    """`stop` ends the process (the port refuses, status says stopped); `start` brings it back, same key."""
    before = box.admin_key()
    done = _installer("stop", "--prefix", str(box.prefix))
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", box.port)):
        pass
    assert box.status() == "service: stopped (supervised)"
    assert not (box.prefix / "run" / "appliance.json").exists()
    assert _installer("stop", "--prefix", str(box.prefix)).stdout == "not running\n"
    done = _installer("start", "--prefix", str(box.prefix))
    assert done.returncode == 0, done.stderr
    assert box.admin_key() == before
    assert ", version 2, ready at " in box.status()


def test_uninstall_stops_the_serving_appliance_and_keeps_the_data(box: Box) -> None:
    """Last on the box: `uninstall --keep-data` while it serves stops the supervised process (the port
    refuses), removes run/ with its record and log, and leaves the data with the admin key file."""
    assert ", ready at " in box.status()
    done = _installer("uninstall", "--prefix", str(box.prefix), "--keep-data")
    assert done.returncode == 0, done.stderr
    assert "stop: the supervised appliance stopped" in done.stdout
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", box.port)):
        pass
    assert not (box.prefix / "run").exists()
    assert (box.prefix / "data" / "admin.key").is_file()


def test_a_service_that_exits_is_one_line_naming_its_log(tmp_path: Path, keys: Keys) -> None:
    """The port is taken: the appliance exits, the installer says so in one line with the log's path and
    fails; the version stays installed, and nothing serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bundle, prefix = _bundle(tmp_path, keys["a"][0], 1, port), tmp_path / "prefix"
        try:
            done = _installer(
                "install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1]), "--start"
            )
        finally:
            _stop_leftover(prefix)
    assert done.returncode == errors.ServiceError.exit_code, done.stderr
    log = prefix / "run" / "appliance.log"
    assert done.stderr.splitlines()[-1] == (
        f"installer: failed: the appliance exited with status 1 before it was ready; see {log}"
    )
    assert "Address already in use" in log.read_text()
    assert Prefix(prefix).current() == 1
    assert "service: stopped (supervised)" in _installer("status", "--prefix", str(prefix)).stdout
