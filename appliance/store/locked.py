"""The error of a passphrase-mode store opened without its passphrase."""

from __future__ import annotations

from appliance.errors import ApplianceError


class StoreLockedError(ApplianceError):
    """The store is in passphrase mode and no passphrase was given: encrypted models cannot be opened."""

    status_code = 503
    code = "store_locked"
    retry_after_s = 30
