"""Upgrades and rollbacks of a serving prefix: the service is stopped before the switch and serves the new
current version after, even without --start; a version that does not become ready is returned from."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from installer import errors
from installer.data import db_revision
from installer.state import Prefix
from tests.installer.helpers import run_installed_appliance
from tests.installer.test_start import (
    Box,
    Keys,
    _bundle,
    _curl,
    _free_port,
    _installer,
    _stop_leftover,
    install_started,
)


def _ready(box: Box) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{box.port}/health/ready", headers={"Authorization": f"Bearer {box.admin_key()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        return int(reply.status)


class Load(threading.Thread):
    """Chat requests one after another (a fresh connection each) while the installer works: what each
    reply said, and every request that failed (a refused connection among them)."""

    def __init__(self, box: Box) -> None:
        super().__init__(daemon=True)
        self.box, self.key = box, box.admin_key()
        self.replies: list[str] = []
        self.failed: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        """Until `done`: a chat, then 20 ms."""
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}).encode()
        while not self.done.is_set():
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.box.port}/v1/chat/completions",
                data=body,
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            try:
                # Long enough for a restart's gap: the connection waits in the held socket's backlog.
                with urllib.request.urlopen(request, timeout=120) as reply:  # noqa: S310
                    self.replies.append(json.loads(reply.read())["choices"][0]["message"]["content"])
            except OSError as error:
                self.failed.append(repr(error))
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join(timeout=180)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Box]:
    """Version 1 installed and serving (`install --start`)."""
    started = install_started(tmp_path_factory.mktemp("upgrade"), keys)
    try:
        assert started.installed.returncode == 0, started.installed.stderr
        yield started
    finally:
        _stop_leftover(started.prefix)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_upgrade_of_a_running_service_restarts_it_without_start(serving: Box, keys: Keys) -> None:
    """`install v2` (no --start) while 1 serves under load: 1 is stopped before the data step, 2 serves,
    same key; the port stays open throughout (the socket holder keeps it), so no request fails."""
    before = serving.admin_key()
    bundle = _bundle(serving.work, keys["a"][0], 2, serving.port)
    with Load(serving) as load:
        done = _installer("install", str(bundle), "--prefix", str(serving.prefix))
        time.sleep(0.5)  # a few requests to version 2 as well
    assert done.returncode == 0, done.stderr
    assert load.failed == []
    assert load.replies[0] == "hello from version 1"
    assert load.replies[-1] == "hello from version 2"
    holder = json.loads((serving.prefix / "run" / "appliance.json").read_text())["pid"]
    assert f"starting it on the socket that pid {holder} holds" in done.stderr
    assert done.stderr.index("stopping version 1") < done.stderr.index("step: data")
    assert serving.admin_key() == before
    assert _curl(done.stdout) == "hello from version 2"
    assert ", version 2, ready at " in serving.status()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_version_that_does_not_become_ready_returns_to_the_previous(serving: Box, keys: Keys) -> None:
    """A broken v3 (migrates the data to 0002, then exits at once) under load: exit 61, one line naming the
    return, `current` is 2 again with the data as 2 left it, 2 answers ready and a chat, status says so;
    no request failed meanwhile."""
    bundle = _bundle(serving.work, keys["a"][0], 3, serving.port, serves="broken", revisions=("0001", "0002"))
    with Load(serving) as load:
        done = _installer("install", str(bundle), "--prefix", str(serving.prefix))
    log = serving.prefix / "run" / "appliance.log"
    assert done.returncode == errors.ServiceError.exit_code, done.stderr
    # The return too happens on the held socket: requests wait for version 2 rather than fail.
    assert load.failed == []
    assert set(load.replies) == {"hello from version 2"}
    assert done.stderr.splitlines()[-1] == (
        "install: version 3 did not become ready (exited with status 1 before it was ready; "
        f"see {log}); returned to version 2, serving"
    )
    assert Prefix(serving.prefix).current() == 2
    assert db_revision(serving.prefix / "data" / "registry.db") == "0001"
    assert _ready(serving) == 200
    assert ", version 2, ready at " in serving.status()
    chat = (
        f"curl -s http://127.0.0.1:{serving.port}/v1/chat/completions "
        f"-H 'Authorization: Bearer {serving.admin_key()}' -H 'Content-Type: application/json' "
        """-d '{"model":"tiny","messages":[{"role":"user","content":"Hello"}]}'"""
    )
    reply = subprocess.run(["bash", "-c", chat], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(reply.stdout)["choices"][0]["message"]["content"] == "hello from version 2"
    status = _installer("status", "--prefix", str(serving.prefix)).stdout
    assert "last outcome: install returned: version 3 did not become ready (" in status
    assert "returned to version 2, data restored from registry-2.db" in status
    assert run_installed_appliance(serving.prefix, "keys", "list").split() == ["admin"]


def test_rollback_of_a_running_service_serves_the_older_version(serving: Box) -> None:
    """`rollback` while 2 serves: 1 serves after it, with the same key."""
    before = serving.admin_key()
    done = _installer("rollback", "--prefix", str(serving.prefix))
    assert done.returncode == 0, done.stderr
    assert "stopping version 2" in done.stderr
    assert Prefix(serving.prefix).current() == 1
    assert serving.admin_key() == before
    assert ", version 1, ready at " in serving.status()


@pytest.fixture(scope="module")
def broken_below(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Box]:
    """Version 1 installed but broken (its `serve` exits at once, never started), version 2 serving over
    it with `install --start`, and a key `later` created under 2."""
    work, port = tmp_path_factory.mktemp("rollback-broken"), _free_port()
    one = _bundle(work, keys["a"][0], 1, port, serves="broken")
    prefix = work / "prefix"
    done = _installer("install", str(one), "--prefix", str(prefix), "--trust", str(keys["a"][1]))
    box = Box(prefix, port, work, done)
    try:
        assert done.returncode == 0, done.stderr
        two = _bundle(work, keys["a"][0], 2, port)
        done = _installer("install", str(two), "--prefix", str(prefix), "--start")
        assert done.returncode == 0, done.stderr
        run_installed_appliance(prefix, "keys", "create", "--name", "later", "--quiet")
        yield box
    finally:
        _stop_leftover(prefix)


def _returned_from_1(box: Box, done: subprocess.CompletedProcess[str]) -> str:
    """A rollback to the broken 1 came back: exit 61, one line, 2 current and serving; the last outcome."""
    log = box.prefix / "run" / "appliance.log"
    assert done.returncode == errors.ServiceError.exit_code, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "rollback: version 1 did not become ready (exited with status 1 before it was ready; "
        f"see {log}); returned to version 2, serving"
    )
    assert Prefix(box.prefix).current() == 2
    assert _ready(box) == 200
    assert ", version 2, ready at " in box.status()
    assert run_installed_appliance(box.prefix, "keys", "list").split() == ["admin", "later"]
    status = _installer("status", "--prefix", str(box.prefix)).stdout
    last = next(line for line in status.splitlines() if line.startswith("last outcome: "))
    assert last.startswith("last outcome: rollback returned: version 1 did not become ready (")
    return last


def test_a_rollback_to_a_version_that_does_not_become_ready_returns(broken_below: Box) -> None:
    """`rollback` while 2 serves, to a 1 that exits: back on 2 with the data untouched (1 never migrated
    it, so nothing is restored), the key made under 2 still there, audited."""
    last = _returned_from_1(broken_below, _installer("rollback", "--prefix", str(broken_below.prefix)))
    assert "returned to version 2 at " in last
    assert "data restored" not in last


def test_a_restoring_rollback_that_comes_back_puts_the_newer_data_back(broken_below: Box) -> None:
    """`rollback --restore-data` to the broken 1: the registry as 2 left it is put back on the return (the
    key made under 2 survives), and the outcome says from which snapshot."""
    done = _installer("rollback", "--restore-data", "--prefix", str(broken_below.prefix))
    assert "data: registry restored from " in done.stderr
    last = _returned_from_1(broken_below, done)
    assert "returned to version 2, data restored from registry-2.db at " in last
