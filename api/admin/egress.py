"""GET /admin/egress: `appliance doctor`'s egress report, made from inside the running gateway.

The guard check probes the gateway process itself, so an admin (and the end-to-end test) sees that the
serving process has its tripwire; the worker check starts a worker exactly as the supervisor does.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency

from api.auth import admin_only
from api.doctor import egress_posture
from api.state import GatewayState
from appliance.egress import AUDIT_ACTION
from appliance.registry.keys import KeyInfo
from installer.egress import SELF_TEST_TARGET


@get("/admin/egress", guards=[admin_only], sync_to_thread=True)
def egress_report(
    request: Request[KeyInfo, Any, Any], gateway: NamedDependency[GatewayState]
) -> dict[str, Any]:
    """The egress posture of this appliance as the gateway sees it; every refused probe is audited."""
    posture = egress_posture(gateway.settings)
    # The gateway's own refusal was audited by its guard; a worker's goes to the worker's stderr, which
    # the gateway captured here, so it is recorded on the worker's behalf.
    worker = next(c for c in posture.checks if c.name == "worker guard")
    if worker.level == "ok":
        target = f"{SELF_TEST_TARGET[0]}:{SELF_TEST_TARGET[1]}"
        gateway.registry.audit.record(AUDIT_ACTION, outcome="denied", target=target, detail=worker.detail)
    gateway.registry.audit.record(
        "egress.report", outcome="success" if posture.ok else "failure", actor_key_id=request.user.id
    )
    result: dict[str, Any] = msgspec.to_builtins(posture)
    return result
