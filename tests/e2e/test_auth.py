"""Keys on every route but liveness; roles; revocation; audit of failures and admin actions."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.server import RunningAppliance, cli

ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/default"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/abc"),
    ("GET", "/admin/engines"),
    ("GET", "/admin/models"),
    ("GET", "/admin/audit"),
]
ADMIN_ROUTES = [route for route in ROUTES if route[1].startswith("/admin")]


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer apl-000000000000-wrong", "Basic abc", "Bearer"])
def test_every_route_refuses_without_a_valid_key(
    appliance: RunningAppliance, method: str, path: str, authorization: str | None
) -> None:
    """No key, a wrong key or another scheme is 401 invalid_api_key, with a request id."""
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, appliance.base_url + path, headers=headers, json={})
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]


def test_liveness_needs_no_key(appliance: RunningAppliance) -> None:
    """GET /health/live is the one public route."""
    response = httpx.get(f"{appliance.base_url}/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_user_key_on_admin_route_is_403(appliance: RunningAppliance, method: str, path: str) -> None:
    """A user key may not use admin routes."""
    response = httpx.request(
        method, appliance.base_url + path, headers=appliance.headers(), json={"name": "x"}
    )
    assert response.status_code == 403
    assert _error(response)["code"] == "insufficient_permissions"


def test_key_created_through_admin_api_works_until_revoked(appliance: RunningAppliance) -> None:
    """An admin creates a key, it authenticates, the admin revokes it, it fails with 401."""
    admin = appliance.headers(appliance.admin_key)
    created = httpx.post(
        f"{appliance.base_url}/admin/keys", headers=admin, json={"name": "app", "role": "user"}
    )
    assert created.status_code == 201
    new_key = created.json()["key"]
    models = httpx.get(f"{appliance.base_url}/v1/models", headers=appliance.headers(new_key))
    assert models.status_code == 200
    revoked = httpx.delete(f"{appliance.base_url}/admin/keys/{created.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    after = httpx.get(f"{appliance.base_url}/v1/models", headers=appliance.headers(new_key))
    assert after.status_code == 401
    listed = httpx.get(f"{appliance.base_url}/admin/keys", headers=admin).json()["data"]
    assert all("key" not in entry for entry in listed)


def test_key_revoked_from_the_cli_fails_at_once(appliance: RunningAppliance) -> None:
    """Revoking with `appliance keys revoke` takes effect on the running gateway's next request."""
    key = cli(appliance.home, "keys", "create", "--name", "temp", "--quiet").strip()
    assert httpx.get(f"{appliance.base_url}/v1/models", headers=appliance.headers(key)).status_code == 200
    cli(appliance.home, "keys", "revoke", key.split("-")[1])
    response = httpx.get(f"{appliance.base_url}/v1/models", headers=appliance.headers(key))
    assert response.status_code == 401
    assert "revoked" in str(_error(response)["message"])


def test_failures_and_admin_actions_are_audited(appliance: RunningAppliance) -> None:
    """Auth failures, forbidden attempts and admin actions all land in the audit log."""
    httpx.get(f"{appliance.base_url}/v1/models", headers={"Authorization": "Bearer nope"})
    httpx.get(f"{appliance.base_url}/admin/keys", headers=appliance.headers())
    admin = appliance.headers(appliance.admin_key)
    httpx.post(f"{appliance.base_url}/admin/keys", headers=admin, json={"name": "audited"})
    events = httpx.get(f"{appliance.base_url}/admin/audit", headers=admin).json()["data"]
    actions = [(e["action"], e["outcome"]) for e in events]
    assert ("auth.failed", "denied") in actions
    assert ("auth.forbidden", "denied") in actions
    assert ("keys.create", "success") in actions
    assert not {"audit.read", "keys.list"} & {action for action, _ in actions}  # reads are not audited
