"""Registry changes as events (`model.added`, `model.removed`, `model.enabled`, `model.disabled`), found by
comparing what the registry lists now with what it listed at the last look, whoever changed it (the CLI in
another process, the admin API in this one): the gateway looks whenever the registry's change counter
moves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from appliance.registry.models import ModelInfo
from appliance.serving.events import Events


def status_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(event kind, model name, its status now) for each name added, removed, enabled or disabled between
    two listings of name -> status, in the order of `after` then the removed ones."""
    found: list[tuple[str, str, str]] = []
    for name, status in after.items():
        was = before.get(name)
        if was is None:
            found.append(("model.added", name, status))
        elif was != status:
            found.append((f"model.{status}", name, status))
    found.extend(("model.removed", name, "removed") for name in before if name not in after)
    return found


class RegistryWatch:
    """Publishes the registry's model changes; the first look only takes the listing as it is."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._seen: dict[str, str] | None = None

    def look(self, listing: Iterable[ModelInfo]) -> None:
        """Compare `listing` (every registered model) with the last one and publish what changed."""
        now = {model.name: model.status for model in listing}
        if self._seen is not None:
            for kind, name, status in status_changes(self._seen, now):
                self._events.publish(kind, model=name, status=status)
        self._seen = now
