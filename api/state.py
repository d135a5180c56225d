"""What the gateway holds for its lifetime, built in the app factory and reached through dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from api.drain import Drain
from api.metrics import GatewayMetrics
from appliance.activation import Activations
from appliance.chain import Chains
from appliance.registry.registry import Registry
from appliance.serving.events import Events
from appliance.serving.live import LiveModels
from appliance.serving.residency import Residency
from appliance.settings import Settings
from appliance.store.gate import StoreGate
from appliance.supervisor import Supervisor


@dataclass(frozen=True)
class GatewayState:
    """Settings, registry, workers and metrics of one running gateway."""

    settings: Settings
    registry: Registry
    supervisor: Supervisor
    metrics: GatewayMetrics
    chains: Chains
    store: StoreGate
    """Whether the encrypted store is unlocked (passphrase mode), and unlocking or locking it."""
    live: LiveModels
    """The workers following the registry while serving (models added, enabled, disabled, removed)."""
    residency: Residency
    """Which enabled models are loaded, within the memory budget: requests load theirs through it."""
    events: Events
    """What happened to the served models (loads, unloads, ...), for `GET /admin/events`."""
    drain: Drain = field(default_factory=Drain)
    """Set when shutdown begins; streams still running at its deadline are cut with an error event."""

    @cached_property
    def activations(self) -> Activations:
        """Activating and rolling back model versions (blue-green) in this gateway."""
        return Activations(
            self.settings, self.registry.models, self.supervisor, self.chains, load=self.residency.load
        )
