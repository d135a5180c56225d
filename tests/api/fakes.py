"""Small stand-ins shared by the limit tests: a clock the test moves, and a user key."""

from __future__ import annotations

from datetime import UTC, datetime

from appliance.registry.keys import KeyInfo, Role


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user_key(name: str = "app", key_id: str = "k1") -> KeyInfo:
    """A user key as the auth middleware would hand it to a handler."""
    return KeyInfo(key_id, name, Role.USER, datetime.now(UTC), None, None)
