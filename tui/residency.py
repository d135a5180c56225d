"""The models screen's residency columns in few characters: a table row has 80 columns for everything."""

from __future__ import annotations

from appliance.wire.residency import ResidentModel, gib, shown_state, until_text

NOT_SERVED = ("-", "-", "-", "-")
"""The cells of a model the gateway does not serve (disabled): no residency at all."""


def short_span(seconds: float) -> str:
    """`12s`, `3m`, `2h`: the largest whole unit."""
    whole = max(0, round(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h"
    if whole >= 60:
        return f"{whole // 60}m"
    return f"{whole}s"


def short_until(model: ResidentModel) -> str:
    """When it unloads: `pinned`, `busy`, `in 4m`, `now`, `-` (the words of `models ps`, shortened)."""
    said = until_text(model)
    if said.endswith(" from now") and model.expires_in_s is not None:
        return f"in {short_span(model.expires_in_s)}"
    return said


def residency_cells(model: ResidentModel | None) -> tuple[str, str, str, str]:
    """State, memory in GiB, idle time and expiry of one model's row."""
    if model is None:
        return NOT_SERVED
    idle = "-" if model.idle_s is None else short_span(model.idle_s)
    return shown_state(model), gib(model.memory_bytes), idle, short_until(model)


def unload_question(name: str) -> str:
    """What the console asks before unloading."""
    return f"Unload {name!r} now? Its memory is freed; the next request for it loads it again (and waits)."
