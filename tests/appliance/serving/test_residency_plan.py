"""`appliance plan`'s residency explanation: which models load together within the RAM budget and
max_loaded, whom each other model evicts (least recently used, never a pinned one), and which never fit."""

from __future__ import annotations

from appliance.planner import GIB
from appliance.serving.residency_plan import (
    Candidate,
    Outsider,
    explain_residency,
    explanation_lines,
)


def cpu(name: str, gib: float, *, pinned: bool = False) -> Candidate:
    """A llama.cpp model needing `gib` GiB of RAM."""
    return Candidate(name, "llamacpp", int(gib * GIB), ("CPU",), pinned=pinned)


def gpu(name: str, *devices: str) -> Candidate:
    """A vLLM model holding `devices`."""
    return Candidate(name, "vllm", 20 * GIB, devices)


def test_models_load_together_while_they_fit_and_the_next_evicts_the_oldest() -> None:
    """Two of three fit 4 GiB; the third evicts the first loaded (the least recently used) only."""
    explained = explain_residency(
        [cpu("large", 2.5), cpu("mid", 1.0), cpu("small", 1.0)], ram_budget_bytes=4 * GIB, max_loaded=3
    )
    assert [c.name for c in explained.together] == ["large", "mid"]
    assert explained.ram_used_bytes == int(3.5 * GIB)
    assert explained.outsiders == (Outsider("small", evicts=("large",)),)


def test_max_loaded_evicts_one_even_when_memory_is_plenty() -> None:
    """At max_loaded the oldest unpinned model goes, whatever the RAM."""
    explained = explain_residency([cpu("a", 0.5), cpu("b", 0.5)], ram_budget_bytes=64 * GIB, max_loaded=1)
    assert [c.name for c in explained.together] == ["a"]
    assert explained.outsiders == (Outsider("b", evicts=("a",)),)


def test_pinned_models_load_first_and_are_never_evicted() -> None:
    """A pinned model is loaded before the registry's order and skipped when evicting."""
    explained = explain_residency(
        [cpu("a", 1.0), cpu("b", 1.0), cpu("pinned", 1.0, pinned=True)],
        ram_budget_bytes=2 * GIB,
        max_loaded=2,
    )
    assert [c.name for c in explained.together] == ["pinned", "a"]
    assert explained.outsiders == (Outsider("b", evicts=("a",)),)


def test_a_model_larger_than_the_budget_never_fits_with_the_figures() -> None:
    """More than the whole budget: never, with what it needs and what the budget holds."""
    explained = explain_residency([cpu("a", 1.0), cpu("huge", 6.0)], ram_budget_bytes=4 * GIB, max_loaded=2)
    (huge,) = explained.outsiders
    assert huge.evicts == ()
    assert huge.never == "needs 6.0 GiB of RAM; the budget holds 4.0 GiB"


def test_a_model_that_fits_only_without_the_pinned_ones_is_refused() -> None:
    """Room only if a pinned model went: it never loads beside it, and the reason names it."""
    explained = explain_residency(
        [cpu("keep", 3.0, pinned=True), cpu("other", 2.0)], ram_budget_bytes=4 * GIB, max_loaded=4
    )
    (other,) = explained.outsiders
    assert other.evicts == ()
    assert "pinned keep" in other.never
    assert "needs 2.0 GiB of the 1.0 GiB left" in other.never


def test_a_gpu_model_evicts_the_one_holding_its_gpu_not_ram_models() -> None:
    """vLLM models take GPUs, not the RAM budget: a second model on the same GPU evicts the first only."""
    explained = explain_residency(
        [gpu("q1", "GPU 0"), cpu("small", 1.0), gpu("q2", "GPU 0")], ram_budget_bytes=2 * GIB, max_loaded=3
    )
    assert [c.name for c in explained.together] == ["q1", "small"]
    assert explained.ram_used_bytes == 1 * GIB
    assert explained.outsiders == (Outsider("q2", evicts=("q1",)),)


def test_a_model_the_planner_fits_nowhere_says_the_planners_reason() -> None:
    """The planner's own refusal is the reason."""
    nowhere = Candidate("big", "none", 50 * GIB, fits=False, reason="needs 50.0 GiB; 8.0 GiB free")
    explained = explain_residency([nowhere], ram_budget_bytes=4 * GIB, max_loaded=1)
    assert explained.outsiders == (
        Outsider("big", never="the planner fits it nowhere (needs 50.0 GiB; 8.0 GiB free)"),
    )


def test_the_lines_printed_under_the_plan() -> None:
    """One line for the budget, one for the models together, one per other model."""
    explained = explain_residency(
        [cpu("a", 1.0, pinned=True), cpu("b", 2.0), cpu("c", 2.0), cpu("huge", 9.0)],
        ram_budget_bytes=4 * GIB,
        max_loaded=2,
    )
    assert explanation_lines(explained) == [
        "Residency: RAM budget 4.0 GiB, at most 2 loaded at once",
        "  fit together: a (1.0 GiB, pinned), b (2.0 GiB); 3.0 of 4.0 GiB RAM, 2 of max 2 loaded",
        "  c: loading it evicts b (least recently used first)",
        "  huge: can never be loaded: needs 9.0 GiB of RAM; the budget holds 4.0 GiB",
    ]


def test_max_loaded_zero_is_no_limit_but_memory() -> None:
    """`[residency] max_loaded = 0`: as many as the RAM holds."""
    explained = explain_residency(
        [cpu("a", 1.0), cpu("b", 1.0), cpu("c", 1.0)], ram_budget_bytes=2 * GIB, max_loaded=0
    )
    assert [c.name for c in explained.together] == ["a", "b"]
    assert explained.outsiders == (Outsider("c", evicts=("a",)),)
    assert explanation_lines(explained)[:2] == [
        "Residency: RAM budget 2.0 GiB, no limit on models loaded but memory",
        "  fit together: a (1.0 GiB), b (1.0 GiB); 2.0 of 2.0 GiB RAM, 2 loaded",
    ]
