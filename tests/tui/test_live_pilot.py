"""Issue 18 against a real gateway: the overview's live figures under a streaming load, the audit filter
finding a key's creation by the key's id, and Enter opening a row whole."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from textual.widgets import DataTable

from tests.e2e.server import RunningAppliance
from tests.tui.helpers import rows, until
from tui.app import ConsoleApp
from tui.client import AdminClient
from tui.screens.row import RowScreen

STREAMS = 3


@contextmanager
def streaming_load(gateway: RunningAppliance) -> Iterator[None]:
    """STREAMS clients streaming short chat completions back to back until the block ends."""
    stop = threading.Event()

    def one_client() -> None:
        body = {
            "model": "smollm2-135m",
            "stream": True,
            "max_tokens": 48,
            "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
        }
        with httpx.Client(base_url=gateway.base_url, headers=gateway.headers(), timeout=60) as client:
            while not stop.is_set():
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    for _ in response.iter_bytes():
                        pass

    threads = [threading.Thread(target=one_client, daemon=True) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


async def test_the_overview_shows_tokens_per_second_and_a_moving_ttft_under_load(
    gateway: RunningAppliance,
) -> None:
    """While streams run, output tok/s is above 0 and the TTFT median takes more than one value."""
    app = ConsoleApp(AdminClient(gateway.base_url, gateway.admin_key), poll_s=0.25)
    with streaming_load(gateway):
        async with app.run_test(size=(80, 24)) as pilot:
            history = app.history
            await until(pilot, lambda: any(t > 0 for t in history.tokens_per_s), "output tok/s above 0")
            await until(
                pilot, lambda: len({round(t, 3) for t in history.ttft_p50_ms if t > 0}) >= 2, "a moving TTFT"
            )
            label = str(app.screen.query_one("#tps-label").render())
            assert label.startswith("output tok/s")


def create_key(gateway: RunningAppliance, name: str) -> str:
    """A new user key made through the admin API; its id."""
    admin = gateway.headers(gateway.admin_key)
    created = httpx.post(f"{gateway.base_url}/admin/keys", headers=admin, json={"name": name}, timeout=30)
    key_id: str = created.json()["id"]
    return key_id


async def test_filtering_the_audit_by_a_new_key_id_finds_its_creation(gateway: RunningAppliance) -> None:
    """A key created through the API: its id in the filter shows the `keys.create` row naming it."""
    key_id = create_key(gateway, "filtered")
    app = ConsoleApp(AdminClient(gateway.base_url, gateway.admin_key), poll_s=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        table: DataTable[str] = app.screen.query_one("#audit", DataTable)
        await until(pilot, lambda: table.row_count > 0, "the audit log")
        await pilot.press("slash", *key_id)
        await until(pilot, lambda: any(r[2] == "keys.create" and r[5] == key_id for r in rows(table)), "it")
        assert all(key_id in " ".join(r) for r in rows(table))
        assert not any(r[2] in {"audit.read", "keys.list"} for r in rows(table))  # reads are not audited

        await pilot.press("escape", "enter")
        await until(pilot, lambda: isinstance(app.screen, RowScreen), "the opened row")
        assert isinstance(app.screen, RowScreen)
        assert ("target", key_id) in app.screen.fields
