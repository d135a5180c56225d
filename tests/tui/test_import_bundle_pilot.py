"""Importing a signed model bundle from the console: the import dialog takes a `.bundle` path, the real
gateway of an installed prefix's data directory verifies it with the prefix's trusted key and encrypts its
model; a bundle signed by another key is refused on one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from installer.crypto import load_public_key
from installer.pack import generate_key_pair
from installer.state import InstalledVersion, InstallState, Prefix
from installer.trust import TrustedKeys
from tests.e2e.server import RunningAppliance, start_appliance
from tests.gguf_files import write_tiny_gguf
from tests.installer.test_model_bundle import build_model_bundle
from tests.tui.helpers import rows, until
from tests.tui.test_import_pilot import console
from tui.screens.import_model import ImportModelScreen
from tui.screens.models import COLUMNS


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path
) -> Iterator[tuple[RunningAppliance, Path, Path]]:
    """A gateway serving PREFIX/data of a prefix that trusts key `a`; `a`'s private key; a work folder."""
    work = tmp_path_factory.mktemp("bundle-console")
    private, public = generate_key_pair(work / "keys", "a")
    prefix = Prefix(work / "prefix")
    prefix.data.mkdir(parents=True, mode=0o700)
    trust = TrustedKeys().with_keys([load_public_key(public.read_text())])
    prefix.save(InstallState(trust, [InstalledVersion(1, "cpu", "0" * 64, 0)]))
    running = start_appliance(prefix.data, model_path)
    yield running, private, work
    running.stop()
    assert "Traceback" not in running.log, running.log


async def _import_from_console(
    gateway: RunningAppliance, bundle: Path, done: str
) -> tuple[str, list[list[str]]]:
    """2, i, the bundle's path, Enter; the status line once it contains `done`, and the models table."""
    app = console(gateway)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        table: DataTable[str] = app.screen.query_one("#models", DataTable)
        await until(pilot, lambda: table.row_count >= 1, "the models")
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, ImportModelScreen), "the import dialog")
        await pilot.press(*str(bundle), "enter")
        status = app.screen.query_one("#models-status", Static)
        await until(pilot, lambda: done in str(status.render()), done)
        if "refused" not in done:
            await until(pilot, lambda: any(r[0] == "tiny" for r in rows(table)), "the new row")
        return str(status.render()), rows(table)


async def test_a_bundle_path_imports_the_bundles_models(
    installed: tuple[RunningAppliance, Path, Path],
) -> None:
    """The bundle names its model: `tiny` is imported, encrypted, listed; the status says from the bundle."""
    gateway, key, work = installed
    tiny = write_tiny_gguf(work / "tiny.gguf")
    bundle = build_model_bundle(work / "dist", key, "--model", str(tiny))
    line, table = await _import_from_console(gateway, bundle, "tiny imported")
    assert "from the signed bundle" in line
    row = next(r for r in table if r[0] == "tiny")
    assert row[COLUMNS.index("encrypted")] == "yes"


async def test_a_bundle_by_another_key_is_refused_on_one_line(
    installed: tuple[RunningAppliance, Path, Path],
) -> None:
    """Signed by a key the prefix does not trust: refused at once, the gateway's reason on the status."""
    gateway, _, work = installed
    other, _ = generate_key_pair(work / "other-keys", "other")
    tiny = write_tiny_gguf(work / "other.gguf")
    bundle = build_model_bundle(work / "other-dist", other, "--model", str(tiny), "--name", "other")
    line, table = await _import_from_console(gateway, bundle, "refused")
    assert "not trusted" in line
    assert "\n" not in line.strip()
    assert not any(r[0] == "other" for r in table)
