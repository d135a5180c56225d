"""Issue 18: the console's own reads filled the audit log (8 of 10 rows in a short session).

Every GET the console makes, polled as often as it likes, writes no audit row; a change it makes (a key
created) is still one row naming the admin's key.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from litestar.testing import AsyncTestClient

from tests.security.test_audit_flood import bearer, gateway_app

CONSOLE_READS = (
    "/admin/console/overview",
    "/admin/keys",
    "/admin/audit",
    "/admin/models",
    "/admin/engines",
    "/admin/routes",
    "/admin/store/models",
    "/admin/store/status",
)


def audit_actions(home: Path) -> list[tuple[str, str | None, str]]:
    """(action, actor, target) of every committed audit row, oldest first."""
    with sqlite3.connect(home / "registry.db") as connection:
        query = "SELECT action, actor_key_id, target FROM audit_events ORDER BY id"
        return list(connection.execute(query))


async def test_console_reads_write_no_audit_row_and_changes_still_do(appliance_home: Path) -> None:
    """Five rounds of every console read: no row; one key created: one `keys.create` row."""
    app, admin, _ = gateway_app(appliance_home)
    async with AsyncTestClient(app) as client:
        for _ in range(5):
            for path in CONSOLE_READS:
                response = await client.get(path, headers=bearer(admin))
                assert response.status_code == 200, (path, response.text)
        created = await client.post("/admin/keys", headers=bearer(admin), json={"name": "ci"})
        assert created.status_code == 201
    new_id = created.json()["id"]
    assert audit_actions(appliance_home) == [("keys.create", admin.split("-")[1], new_id)]
