"""What the gateway holds for its lifetime, built in the app factory and reached through dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from api.metrics import GatewayMetrics
from appliance.chain import Chains
from appliance.registry.registry import Registry
from appliance.settings import Settings
from appliance.supervisor import Supervisor


@dataclass(frozen=True)
class GatewayState:
    """Settings, registry, workers and metrics of one running gateway."""

    settings: Settings
    registry: Registry
    supervisor: Supervisor
    metrics: GatewayMetrics
    chains: Chains
