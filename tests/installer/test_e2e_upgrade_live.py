"""Issue 18's acceptance, end to end, in a loopback-only network namespace with the real CPU bundle:
`install --start` and the curl it prints; an upgrade under a streaming load with zero failed requests, after
which the new version serves; a key created after the upgrade still works after `rollback`; a forced-bad
upgrade returns to the previous version by itself and serves.

One install for the whole module (the steps build on each other and each takes minutes): the driver
(tests/installer/upgrade_live.py) runs them all inside `unshare -n` and writes a summary that the tests
below read, one acceptance point each.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from installer.build import REPO
from tests.installer.conftest import CpuBundle
from tests.installer.helpers import UNSHARE, Recipe, make_bundle, resign

DRIVER_TIMEOUT_S = 2400
PORT = 8080  # the default: nothing else listens in a fresh namespace
# The suite's 300 s per test is for one test's work; the first test here waits for the CPU bundle's
# build and the driver's four installs (about 8 minutes on a 2-core box).
pytestmark = pytest.mark.timeout(DRIVER_TIMEOUT_S + 900)


def _revisions() -> tuple[str, ...]:
    """The registry's Alembic revisions in order (0001, 0002, ...): the real appliance's migrations."""
    versions = REPO / "appliance" / "registry" / "migrations" / "versions"
    return tuple(sorted(path.name.split("_", 1)[0] for path in versions.glob("[0-9]*_*.py")))


def _kill_leftovers(prefix: Path) -> None:
    """Whatever the driver could not stop (the holder and its appliance have sessions of their own)."""
    for record in ("appliance.json", "child.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            os.killpg(json.loads((prefix / "run" / record).read_text())["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def lived(tmp_path_factory: pytest.TempPathFactory, cpu_bundle: CpuBundle) -> dict[str, Any]:
    """The driver's summary of one box's install, upgrade, rollback and forced-bad upgrade."""
    work = tmp_path_factory.mktemp("upgrade-live")
    # Version 8 is version 7's members signed again under a new number. A second build of the CPU bundle
    # takes minutes and would carry the same code; the upgrade goes by the number and does everything an
    # upgrade does all the same (a new venv, the data snapshot and migrations, the restart).
    v2 = resign(cpu_bundle.bundle, work / "appliance-cpu-8.bundle", cpu_bundle.private, 8, work)
    # Version 9's appliance exits at once (the installer tests' fake, as in test_upgrade_restart.py), and
    # knows the real registry's revisions, so that its install succeeds and only its start fails.
    bad = make_bundle(work, cpu_bundle.private, Recipe(version=9, serves="broken", revisions=_revisions()))
    # Short: the workers' unix sockets live below the prefix, and AF_UNIX paths end at 107 bytes.
    prefix = Path(tempfile.mkdtemp(prefix="live-", dir="/tmp")) / "p"
    plan = {
        "prefix": str(prefix),
        "port": str(PORT if UNSHARE else _free_port()),
        "installer": str(cpu_bundle.installer),
        "public": str(cpu_bundle.public),
        "v1": str(cpu_bundle.bundle),
        "v2": str(v2),
        "bad": str(bad),
        "out": str(work / "summary.json"),
    }
    (work / "plan.json").write_text(json.dumps(plan))
    argv = [sys.executable, "-m", "tests.installer.upgrade_live", str(work / "plan.json")]
    if UNSHARE:  # a namespace of its own with only loopback, brought up
        argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    try:
        driven = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False
        )
    finally:
        _kill_leftovers(prefix)
    try:
        summary: dict[str, Any] = json.loads(Path(plan["out"]).read_text())
    except OSError:
        pytest.fail(f"the driver wrote no summary (exit {driven.returncode}): {driven.stderr[-3000:]}")
    finally:
        shutil.rmtree(prefix.parent, ignore_errors=True)
    return summary


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _step(lived: dict[str, Any], name: str) -> dict[str, Any]:
    """One step's record; a step the driver never reached fails with the driver's error."""
    if name not in lived:
        pytest.fail(f"the driver stopped before `{name}`: {lived.get('error')}")
    step: dict[str, Any] = lived[name]
    return step


def test_install_start_serves_and_the_printed_curl_answers(lived: dict[str, Any]) -> None:
    """One command from the bundle to a serving box, then the curl it printed gets a chat completion."""
    install = _step(lived, "install")
    assert install["rc"] == 0, install["err"]
    assert json.loads(install["curl"])["choices"][0]["message"]["content"]
    assert ", version 7, ready at " in install["service"]


def test_an_upgrade_under_streaming_load_fails_no_request_and_the_new_version_serves(
    lived: dict[str, Any],
) -> None:
    """4 threads streaming with the official client throughout the upgrade: every stream completes (the
    socket stays open; connections in the gap wait in its backlog), and version 8 serves after."""
    upgrade = _step(lived, "upgrade")
    assert upgrade["rc"] == 0, upgrade["err"]
    assert upgrade["failed_count"] == 0, upgrade["failed"]
    assert upgrade["ok"] > 4
    assert "starting it on the socket that pid " in upgrade["err"]
    assert ", version 8, ready at " in upgrade["service"]


def test_a_key_created_after_the_upgrade_still_works_after_rollback(lived: dict[str, Any]) -> None:
    """The data is shared: a key made under version 8 answers before and after `rollback` to 7."""
    key, rollback = _step(lived, "key"), _step(lived, "rollback")
    assert rollback["rc"] == 0, rollback["err"]
    assert ", version 7, ready at " in rollback["service"]
    assert key["before_rollback"]
    assert key["after_rollback"]


def test_a_forced_bad_upgrade_returns_to_the_previous_version_by_itself(lived: dict[str, Any]) -> None:
    """Version 9 cannot start: exit 61, one line naming the return, version 7 serves again (the key made
    after the upgrade too), and the streams under load never failed, the return included."""
    bad = _step(lived, "bad")
    assert bad["rc"] == 61, bad["err"]
    assert bad["last"].startswith("install: version 9 did not become ready (exited with status 1 before")
    assert bad["last"].endswith("returned to version 7, serving")
    assert ", version 7, ready at " in bad["service"]
    assert bad["chat"]
    assert bad["failed_count"] == 0, bad["failed"]
    assert lived["stop"] == "stopped", lived.get("error")
    assert "error" not in lived, lived["error"]
