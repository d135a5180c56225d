"""What the admin API says about model residency (which models are loaded, in what memory, until when), and
how the CLI (`appliance models ps`) and the console word it: both import these, so they say the same."""

from __future__ import annotations

import msgspec

GIB = 1024**3


class ResidentModel(msgspec.Struct, frozen=True, kw_only=True):
    """One model's residency: one row of `appliance models ps`."""

    name: str
    version: str = ""
    state: str
    """cold, loading, loaded or failed."""
    engine: str = ""
    devices: tuple[str, ...] = ()
    memory_bytes: int = 0
    """What it holds while loaded or loading; what it would need otherwise."""
    in_flight: int = 0
    idle_s: float | None = None
    expires_in_s: float | None = None
    """Seconds until it unloads for being idle; None while busy, pinned or cold."""
    keep_alive_s: float = 0.0
    pinned: bool = False
    loads: int = 0
    last_used_at: float | None = None
    """Unix time of its last request."""
    last_error: str = ""


class ResidencyBudget(msgspec.Struct, frozen=True, kw_only=True):
    """The memory budget and how much of it the loaded models take."""

    ram_budget_bytes: int
    ram_used_bytes: int
    max_loaded: int
    """0: no limit but memory."""
    loaded: int
    gpus: tuple[tuple[str, str], ...] = ()
    """(device label, the model holding it)."""


class ResidencyReport(msgspec.Struct, frozen=True, kw_only=True):
    """GET /admin/residency: the budget and every enabled model's residency."""

    budget: ResidencyBudget
    data: tuple[ResidentModel, ...] = ()


class ModelLoaded(msgspec.Struct, frozen=True, kw_only=True):
    """POST /admin/models/{name}/load: the model is loaded (load_ms 0: it already was)."""

    name: str
    load_ms: float
    memory_bytes: int


class ModelUnloaded(msgspec.Struct, frozen=True, kw_only=True):
    """POST /admin/models/{name}/unload: its worker is stopped."""

    name: str
    state: str


class KeepAliveSet(msgspec.Struct, frozen=True, kw_only=True):
    """POST /admin/models/{name}/pin|unpin: its keep-alive now (None: the `[residency]` default)."""

    name: str
    keep_alive_s: float | None
    pinned: bool


def gib(size: int) -> str:
    """Bytes as GiB with one decimal."""
    return f"{size / GIB:.1f}"


def shown_state(model: ResidentModel) -> str:
    """The state as an admin reads it: a loaded model without requests is `idle`."""
    if model.state == "loaded" and model.in_flight == 0:
        return "idle"
    return model.state


def span(seconds: float) -> str:
    """A duration in the largest whole unit, as `ollama ps` words it: `4 minutes`, `1 hour`, `12 seconds`."""
    whole = max(0, round(seconds))
    for unit, size in (("hour", 3600), ("minute", 60)):
        if whole >= size:
            count = whole // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"


def idle_text(model: ResidentModel) -> str:
    """How long a loaded model has had no request, `-` while busy or not loaded."""
    return "-" if model.idle_s is None else span(model.idle_s)


def until_text(model: ResidentModel) -> str:
    """When a loaded model unloads: `pinned`, `busy` (never while requests run), `4 minutes from now`."""
    if model.state not in ("loaded", "loading"):
        return "-"
    if model.pinned:
        return "pinned"
    if model.in_flight > 0 or model.state == "loading":
        return "busy"
    if model.expires_in_s is None:
        return "-"
    if model.expires_in_s < 1:
        return "now"
    return f"{span(model.expires_in_s)} from now"


def budget_line(budget: ResidencyBudget) -> str:
    """`RAM budget 1.2 of 4.0 GiB; 1 of max 2 loaded`, then each GPU and the model that holds it."""
    limit = f" of max {budget.max_loaded}" if budget.max_loaded else " (no limit but memory)"
    line = (
        f"RAM budget {gib(budget.ram_used_bytes)} of {gib(budget.ram_budget_bytes)} GiB; "
        f"{budget.loaded}{limit} loaded"
    )
    held = "; ".join(f"{device} holds {model}" for device, model in budget.gpus)
    return f"{line}; {held}" if held else line


def budget_short(budget: ResidencyBudget) -> str:
    """The console's overview figure: `RAM 1.2/4.0 GiB, 1/2 loaded`."""
    used, total = gib(budget.ram_used_bytes), gib(budget.ram_budget_bytes)
    loaded = f"{budget.loaded}/{budget.max_loaded}" if budget.max_loaded else f"{budget.loaded}"
    return f"RAM {used}/{total} GiB, {loaded} loaded"
