"""What `appliance plan` says about residency: which enabled models fit in memory together within the budget
and `max_loaded`, and for each one that does not, which loaded models loading it would evict, or that it
can never fit (with the figures).

The same rules as the gateway's residency, applied to a picture with no traffic, each model planned alone
as a load plans it: pinned models are loaded first and never evicted; the others in registry order, each
while it fits; they are taken as loaded in that order and unused since, so the least recently used is the
first loaded. A model that does not fit evicts, oldest first, the unpinned models whose unloading it needs
(RAM for llama.cpp, its GPUs for vLLM, a place under max_loaded), until it fits. Pure: plans and figures
in, an explanation out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from appliance.hardware import Hardware
from appliance.planner import GIB, ModelPlan, ModelSpec, make_plan
from appliance.settings import Settings

LLAMACPP = "llamacpp"


@dataclass(frozen=True)
class Candidate:
    """An enabled model as residency sees it: what its plan (made for it alone) needs, and whether pinned."""

    name: str
    engine: str
    needed_bytes: int
    devices: tuple[str, ...] = ()
    fits: bool = True
    """Whether the planner fits it on this machine at all (alone)."""
    reason: str = ""
    """The planner's reason when it does not."""
    pinned: bool = False

    @property
    def ram_bytes(self) -> int:
        """What it takes of the RAM budget (a vLLM model takes its GPUs instead)."""
        return self.needed_bytes if self.engine == LLAMACPP else 0

    @property
    def gpus(self) -> frozenset[str]:
        """The GPUs it holds while loaded."""
        return frozenset() if self.engine == LLAMACPP else frozenset(self.devices)


def candidate(plan: ModelPlan, *, pinned: bool = False) -> Candidate:
    """A candidate from the model's plan made for it alone."""
    return Candidate(plan.name, plan.engine, plan.needed_bytes, plan.devices, plan.fits, plan.reason, pinned)


@dataclass(frozen=True)
class Outsider:
    """A model that does not fit beside the others: whom loading it evicts, or why it never fits."""

    name: str
    evicts: tuple[str, ...] = ()
    never: str = ""
    """Why it can never be loaded here ('' when evicting `evicts` makes room)."""


@dataclass(frozen=True)
class ResidencyExplanation:
    """The models loaded together, what they take, and every model that does not fit beside them."""

    together: tuple[Candidate, ...]
    outsiders: tuple[Outsider, ...]
    ram_budget_bytes: int
    max_loaded: int

    @property
    def ram_used_bytes(self) -> int:
        """RAM the models loaded together take."""
        return sum(c.ram_bytes for c in self.together)


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _never(model: Candidate, ram_budget: int, max_loaded: int) -> str:
    """Why `model` could not be loaded even with nothing else loaded, or ''."""
    if not model.fits:
        return f"the planner fits it nowhere ({model.reason})"
    if model.ram_bytes > ram_budget:
        return f"needs {_gib(model.ram_bytes)} of RAM; the budget holds {_gib(ram_budget)}"
    return ""


def _room_to_load(loaded: Sequence[Candidate], max_loaded: int) -> bool:
    return max_loaded == 0 or len(loaded) < max_loaded  # 0: no limit but memory


def _fits(model: Candidate, loaded: Sequence[Candidate], ram_budget: int, max_loaded: int) -> bool:
    held = {gpu for c in loaded for gpu in c.gpus}
    ram = sum(c.ram_bytes for c in loaded) + model.ram_bytes
    return _room_to_load(loaded, max_loaded) and ram <= ram_budget and not model.gpus & held


def _evictions(
    model: Candidate, loaded: Sequence[Candidate], ram_budget: int, max_loaded: int
) -> tuple[str, ...] | None:
    """The loaded models (oldest first) that must go for `model` to fit; None if the pinned ones forbid it."""
    kept = list(loaded)
    evicted: list[str] = []
    for old in loaded:  # oldest first: the least recently used
        if _fits(model, kept, ram_budget, max_loaded):
            break
        if old.pinned:
            continue
        ram_short = sum(c.ram_bytes for c in kept) + model.ram_bytes > ram_budget
        helps = (
            not _room_to_load(kept, max_loaded)
            or (ram_short and old.ram_bytes > 0)
            or bool(old.gpus & model.gpus)
        )
        if helps:
            kept.remove(old)
            evicted.append(old.name)
    return tuple(evicted) if _fits(model, kept, ram_budget, max_loaded) else None


def _beside_pinned(model: Candidate, loaded: Sequence[Candidate], ram_budget: int) -> str:
    pinned = [c for c in loaded if c.pinned]
    names = ", ".join(c.name for c in pinned)
    taken = sum(c.ram_bytes for c in pinned)
    return (
        f"does not fit beside the pinned {names} ({_gib(taken)} of RAM pinned): it needs "
        f"{_gib(model.ram_bytes)} of the {_gib(ram_budget - taken)} left"
        + ("" if not model.gpus else f" and {', '.join(sorted(model.gpus))}")
    )


def explain_residency(
    models: Sequence[Candidate], *, ram_budget_bytes: int, max_loaded: int
) -> ResidencyExplanation:
    """Which of `models` (registry order) load together, and what each of the others would evict;
    `max_loaded` 0 is no limit but memory, as in `[residency]`."""
    ordered = [m for m in models if m.pinned] + [m for m in models if not m.pinned]
    together: list[Candidate] = []
    left_out: list[Candidate] = []
    for model in ordered:
        fits_alone = not _never(model, ram_budget_bytes, max_loaded)
        if fits_alone and _fits(model, together, ram_budget_bytes, max_loaded):
            together.append(model)
        else:
            left_out.append(model)
    outsiders: list[Outsider] = []
    for model in left_out:
        never = _never(model, ram_budget_bytes, max_loaded)
        if never:
            outsiders.append(Outsider(model.name, never=never))
            continue
        evicts = _evictions(model, together, ram_budget_bytes, max_loaded)
        if evicts is None:
            outsiders.append(Outsider(model.name, never=_beside_pinned(model, together, ram_budget_bytes)))
        else:
            outsiders.append(Outsider(model.name, evicts=evicts))
    return ResidencyExplanation(tuple(together), tuple(outsiders), ram_budget_bytes, max_loaded)


def explanation_lines(explained: ResidencyExplanation) -> list[str]:
    """The explanation as `appliance plan` prints it under the plan table."""
    budget, most = explained.ram_budget_bytes, explained.max_loaded
    limit = f"at most {most} loaded at once" if most else "no limit on models loaded but memory"
    lines = [f"Residency: RAM budget {_gib(budget)}, {limit}"]
    if explained.together:
        names = ", ".join(
            f"{c.name} ({_gib(c.needed_bytes)}{', pinned' if c.pinned else ''})" for c in explained.together
        )
        count = f"{len(explained.together)} of max {most}" if most else f"{len(explained.together)}"
        used = f"{explained.ram_used_bytes / GIB:.1f} of {_gib(budget)} RAM"
        lines.append(f"  fit together: {names}; {used}, {count} loaded")
    else:
        lines.append("  fit together: none")
    for outsider in explained.outsiders:
        if outsider.never:
            lines.append(f"  {outsider.name}: can never be loaded: {outsider.never}")
        else:
            lines.append(
                f"  {outsider.name}: loading it evicts {', '.join(outsider.evicts)} "
                "(least recently used first)"
            )
    return lines


def alone_candidates(
    hardware: Hardware,
    specs: Sequence[ModelSpec],
    settings: Settings,
    *,
    pinned: Collection[str] = (),
    vllm_problem: str = "",
) -> list[Candidate]:
    """Each model (its variants together) planned on the machine alone, as residency plans a load: what it
    needs when the others are unloaded; `pinned` names the pinned ones."""
    groups: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.name, []).append(spec)
    return [
        candidate(
            make_plan(hardware, variants, settings, vllm_problem=vllm_problem).models[0],
            pinned=name in pinned,
        )
        for name, variants in groups.items()
    ]
