"""One handle on the whole registry, built from the database path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.registry.audit import AuditLog
from appliance.registry.changes import DataVersion
from appliance.registry.database import open_database
from appliance.registry.keys import KeyStore
from appliance.registry.models import ModelRegistry
from appliance.registry.routes import RouteStore
from appliance.registry.store_keys import StoreKeys


@dataclass(frozen=True)
class Registry:
    """Keys, models and audit log over one SQLite database."""

    keys: KeyStore
    models: ModelRegistry
    audit: AuditLog
    routes: RouteStore
    store_keys: StoreKeys
    changes: DataVersion
    """Changes whenever any process commits to the database: what a serving gateway polls to follow it."""


def open_registry(database_path: Path) -> Registry:
    """Open and migrate the database, then hand out its three stores."""
    sessions = open_database(database_path)
    changes = DataVersion(database_path)
    return Registry(
        KeyStore(sessions, changes),
        ModelRegistry(sessions, changes),
        AuditLog(sessions),
        RouteStore(sessions),
        StoreKeys(sessions),
        changes,
    )
