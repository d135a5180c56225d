"""Issue 17 item 4: a flood of failed authentications against a real gateway app.

Each failure used to write and commit its own audit row on the event loop, with the raw path and no client
address: 10,000 bad requests were 10,000 rows, and a locked database stalled (then failed) every request.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from litestar import Litestar
from litestar.testing import AsyncTestClient

from api.app import create_app
from appliance.default_settings import write_default_settings
from appliance.registry.keys import Role
from appliance.registry.registry import open_registry
from appliance.settings import load_settings

FLOOD = 400
TESTCLIENT = "testclient"
"""The address Litestar's test transport gives every request."""


def gateway_app(home: Path) -> tuple[Litestar, str, str]:
    """A real gateway app over an empty registry in `home`, with an admin and a user key."""
    home.mkdir(parents=True, exist_ok=True)
    write_default_settings(home)
    settings = load_settings(home)
    registry = open_registry(settings.database_path)
    admin = registry.keys.create("admin", Role.ADMIN).secret
    user = registry.keys.create("user", Role.USER).secret
    return create_app(settings, registry), admin, user


def audit_rows(home: Path, action: str) -> list[tuple[str, str, str, str | None]]:
    """(client, target, detail, actor) of every committed row of `action`, oldest first."""
    with sqlite3.connect(home / "registry.db") as connection:
        query = "SELECT client, target, detail, actor_key_id FROM audit_events WHERE action = ? ORDER BY id"
        return list(connection.execute(query, (action,)))


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for `secret`."""
    return {"Authorization": f"Bearer {secret}"}


async def test_a_flood_of_bad_keys_writes_a_bounded_number_of_rows(appliance_home: Path) -> None:
    """400 failures of two kinds from one address are four rows (the first of each, then its count); each
    admin action is still its own row."""
    app, admin, _ = gateway_app(appliance_home)
    async with AsyncTestClient(app) as client:
        for i in range(FLOOD):
            headers = bearer(f"apl-nokey{i}-guess") if i % 2 else {}
            assert (await client.get(f"/v1/models/m{i}", headers=headers)).status_code == 401
        for i in range(3):
            created = await client.post("/admin/keys", headers=bearer(admin), json={"name": f"k{i}"})
            assert created.status_code == 201
    with sqlite3.connect(appliance_home / "registry.db") as connection:
        query = "SELECT count(*) FROM audit_events WHERE action = 'auth.failed'"
        assert connection.execute(query).fetchone() == (4,)  # it was 400: one per failure
    failed = audit_rows(appliance_home, "auth.failed")  # the lifespan's end committed what was queued
    assert {row[0] for row in failed} == {TESTCLIENT}
    per_reason = FLOOD // 2 - 1  # after each reason's first
    summaries = [
        detail for _, _, detail, _ in failed if f"({per_reason} more in the 60 s after the first)" in detail
    ]
    assert len(summaries) == 2, failed
    assert any("Incorrect API key" in detail for detail in summaries)
    assert len(audit_rows(appliance_home, "keys.create")) == 3


async def test_a_user_key_on_admin_routes_is_summed_up_with_its_key_id(appliance_home: Path) -> None:
    """200 forbidden admin requests from one user key: two `auth.forbidden` rows naming the key."""
    app, _, user = gateway_app(appliance_home)
    async with AsyncTestClient(app) as client:
        for i in range(200):
            assert (await client.get(f"/admin/keys?x={i}", headers=bearer(user))).status_code == 403
    forbidden = audit_rows(appliance_home, "auth.forbidden")
    user_id = user.split("-")[1]
    assert [(row[0], row[3]) for row in forbidden] == [(TESTCLIENT, user_id)] * 2
    assert "199 more" in forbidden[1][2]


async def test_the_stored_target_is_capped_and_control_characters_escaped(appliance_home: Path) -> None:
    """A 5,000-character path is stored as 200 characters ending in `…`; an escape sequence as text."""
    app, admin, _ = gateway_app(appliance_home)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/v1/models/" + "a" * 5000)).status_code == 401
        assert (await client.get("/v1/models/%1b[2Jx", headers=bearer("apl-x-y"))).status_code == 401
        body = (await client.get("/admin/audit", headers=bearer(admin))).json()
    long, escaped = (row["target"] for row in reversed(body["data"]) if row["action"] == "auth.failed")
    assert len(long) == 200
    assert long.startswith("GET /v1/models/aaaa")
    assert long.endswith("a…")
    assert "\x1b" not in escaped
    assert escaped == "GET /v1/models/\\x1b[2Jx"
    assert {row["client"] for row in body["data"] if row["action"] == "auth.failed"} == {TESTCLIENT}


async def test_failed_auths_do_not_wait_for_a_locked_database(appliance_home: Path) -> None:
    """With another connection holding the write lock, bad keys are still refused at once (401, not a 5 s
    wait for SQLite's busy timeout and then a 500); their rows arrive once the lock is gone."""
    app, admin, _ = gateway_app(appliance_home)
    async with AsyncTestClient(app) as client:
        lock = sqlite3.connect(appliance_home / "registry.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # WAL: readers (the key look-up) go on, writers wait
        try:
            started = time.monotonic()
            statuses = [
                (await client.get("/v1/models", headers=bearer(f"apl-k{i}-s"))).status_code for i in range(5)
            ]
            elapsed = time.monotonic() - started
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert statuses == [401] * 5
        assert elapsed < 2.0, f"the refusals waited {elapsed:.1f} s for the database"
        body = (await client.get("/admin/audit", headers=bearer(admin))).json()
    failed = [row for row in body["data"] if row["action"] == "auth.failed"]
    assert [(row["client"], row["detail"]) for row in failed] == [(TESTCLIENT, "Incorrect API key provided.")]
