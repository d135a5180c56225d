"""What the residency benchmark measured, as tables, claims and its section of RESULTS.md."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.batching_bench import command_line, cpu_model
from bench.harness import markdown_table, write_section
from bench.residency_servers import POLL_S, ROUTER
from bench.servers import APPLIANCE

BEGIN, END = "<!-- residency_bench: begin -->", "<!-- residency_bench: end -->"
PLAIN, STORE = "plain file", "encrypted store"
PLAIN_SIDE, STORE_SIDE, ROUTER_SIDE = f"{APPLIANCE}, {PLAIN}", f"{APPLIANCE}, {STORE}", f"{ROUTER}, {PLAIN}"
STORE_RATIO = 1.25
"""Issue 5's bound on a start from the encrypted store against one from the plain file."""


@dataclass(frozen=True)
class Timed:
    """One streamed request: the model asked for, ms to first token and to the end, the load wait header."""

    model: str
    ttft_ms: float | None
    total_ms: float
    load_ms: int | None
    """X-Model-Load-Ms: how long the request waited for a load; None where the server sends no such header."""
    error: str | None


@dataclass(frozen=True)
class Switching:
    """One server's run of the switching workload."""

    server: str
    requests: int
    errors: int
    latency_p50_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    loads: int
    failed_loads: int
    evictions: int
    counted_by: str
    most_loaded: int
    waited: int | None
    """Requests whose X-Model-Load-Ms was above 0 (None where the server sends no such header)."""
    wall_s: float
    at_start: list[str]
    timed_out: bool
    error_kinds: dict[str, int] = field(default_factory=dict)


def header(args: argparse.Namespace, names: list[str], sequence: list[str], third: str) -> list[str]:
    """What this run is: the command, the models and the mix, the limit, and whether the router ran."""
    drawn = Counter(sequence)
    mix = ", ".join(f"{n} {w:g} ({drawn[n]} drawn)" for n, w in zip(names, args.mix, strict=True))
    budget = f"max_loaded = {args.max_loaded} (llama-server: --models-max {args.max_loaded})"
    if args.ram_budget_gib is not None:
        budget += f", ram_budget_gib = {args.ram_budget_gib:g} (the appliance only: the router has none)"
    if args.router_missing:
        router = f"not measured: {args.router_missing}; the appliance runs alone"
    else:
        offline = ", --offline" if args.router_offline else ""
        router = f"{args.llama_server} in router mode (--models-dir, --models-max{offline})"
    return [
        f"command: `{command_line()}`",
        f"models: {', '.join(names)}; the third is {third}",
        f"switching: {args.requests} requests, {args.clients} closed-loop clients, seed {args.seed}: {mix}",
        f"limit: {budget}; switching home keep_alive_s = {args.keep_alive_s:g}",
        f"cold: median of {args.cold_repeats} repeats after one discarded (page cache warm); appliance home"
        " with keep_alive_s = 0; router unloaded with POST /models/unload before each request",
        f"each model: {args.threads} threads, total context {args.context_length}, {args.slots} slots;"
        f" streaming text completions (/v1/completions: Gemma 3 270M has no chat template),"
        f" max_tokens {args.max_tokens}, temperature 0",
        f"llama-server: {router}",
    ]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def cold_medians(cold: dict[str, list[Timed]], model: str, suffix: str) -> dict[str, float | None]:
    """Per side, the median cold TTFT (ms) of `model` (its `suffix`ed name on the store side)."""
    medians = {}
    for side, got in cold.items():
        name = model + suffix if side == STORE_SIDE else model
        medians[side] = _median([t.ttft_ms for t in got if t.model == name and t.ttft_ms is not None])
    return medians


def cold_table(cold: dict[str, list[Timed]], models: list[str], suffix: str) -> list[list[str]]:
    """Header and rows: model, server, source, cold TTFT, X-Model-Load-Ms, to the end, errors, x router."""
    rows = [["model", "server", "source", "cold TTFT ms", "X-Model-Load-Ms", "to end ms", "errors"]]
    rows[0].append(f"TTFT x {ROUTER}")
    for model in models:
        medians = cold_medians(cold, model, suffix)
        base = medians.get(ROUTER_SIDE)
        for side, got in cold.items():
            name = model + suffix if side == STORE_SIDE else model
            mine = [t for t in got if t.model == name]
            loads = [float(t.load_ms) for t in mine if t.load_ms is not None]
            ttft = medians[side]
            server, source = side.split(", ", 1)
            ratio = f"{ttft / base:.2f}" if ttft is not None and base else "-"
            rows.append([model, server, source, _cell(ttft), _cell(_median(loads))])
            rows[-1] += [
                _cell(_median([t.total_ms for t in mine])),
                f"{sum(1 for t in mine if t.error)}/{len(mine)}",
            ]
            rows[-1].append(ratio)
    return rows


def switching_table(switched: list[Switching]) -> list[list[str]]:
    """Header and rows: one per server, latency and TTFT percentiles, loads, evictions, the most loaded."""
    rows = [
        ["server", "requests", "errors", "latency p50 ms", "latency p99 ms", "TTFT p50 ms", "TTFT p99 ms"]
    ]
    rows[0] += ["loads", "evictions", "most loaded", "waited for a load", "wall s"]
    for s in switched:
        name = s.server + (" (cut)" if s.timed_out else "")
        rows.append([name, str(s.requests), str(s.errors)])
        rows[-1] += [_cell(x) for x in (s.latency_p50_ms, s.latency_p99_ms, s.ttft_p50_ms, s.ttft_p99_ms)]
        waited = "n/a" if s.waited is None else str(s.waited)
        rows[-1] += [str(s.loads), str(s.evictions), str(s.most_loaded), waited, f"{s.wall_s:.1f}"]
    return rows


def _compare(claim: str, ours: float | None, base: float | None, bound: float = 1.0) -> str:
    if ours is None or base is None or math.isnan(ours) or math.isnan(base):
        return f"not measured: {claim}"
    verdict = "PASS" if ours <= base * bound else "FAIL"
    return f"{verdict}: {claim} ({ours:.0f} vs {base:.0f} ms)"


def claims(
    cold: dict[str, list[Timed]],
    switched: list[Switching],
    args: argparse.Namespace,
    models: list[str],
    suffix: str,
) -> list[str]:
    """The issue's targets and the comparisons with the router, each PASS, FAIL or not measured."""
    lines = []
    for model in models:
        medians = cold_medians(cold, model, suffix)
        plain, stored, router = (medians.get(s) for s in (PLAIN_SIDE, STORE_SIDE, ROUTER_SIDE))
        claim = f"{model}: cold TTFT from the encrypted store <= {STORE_RATIO:.2f}x from the plain file"
        lines.append(_compare(claim, stored, plain, STORE_RATIO))
        lines.append(_compare(f"{model}: {APPLIANCE}'s cold TTFT (plain file) <= {ROUTER}'s", plain, router))
    by = {s.server: s for s in switched}
    ours, base = by.get(APPLIANCE), by.get(ROUTER)
    if ours is None:
        lines.append(f"not measured: {APPLIANCE} switching with zero errors")
    else:
        verdict = "PASS" if ours.errors == 0 and not ours.timed_out else "FAIL"
        lines.append(f"{verdict}: {APPLIANCE} switching: zero errors (got {ours.errors} of {ours.requests})")
        if args.max_loaded:
            verdict = "PASS" if ours.most_loaded <= args.max_loaded else "FAIL"
            claim = f"never more than {args.max_loaded} models loaded at once (most seen: {ours.most_loaded})"
            lines.append(f"{verdict}: {APPLIANCE} switching: {claim}")
    for label in ("p50", "p99"):
        attr = f"latency_{label}_ms"
        claim = f"{APPLIANCE} switching latency {label} <= {ROUTER}'s"
        lines.append(_compare(claim, getattr(ours, attr, None), getattr(base, attr, None)))
    for s in switched:
        kinds = "".join(f"; {n}x {kind}" for kind, n in sorted(s.error_kinds.items()))
        start = f"; loaded at its start: {', '.join(s.at_start)}" if s.at_start else ""
        failed = f", {s.failed_loads} failed loads" if s.failed_loads else ""
        lines.append(
            f"{s.server}: {s.errors} errors of {s.requests}{kinds}; {s.loads} loads{failed} and {s.evictions}"
            f" evictions counted by {s.counted_by}{start}"
        )
    if base is not None:
        lines.append(
            f"{ROUTER}: /models polled every {POLL_S:g} s; a load and unload between two polls are missed"
        )
    return lines


def write(
    path: Path, head: list[str], cold: list[list[str]], switched: list[list[str]], lines: list[str]
) -> None:
    """(Re)write this benchmark's section of `path`: when, where, how, both tables and the claims."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{platform.platform()}; CPU {cpu_model()}; {cores} cores usable; load average "
    machine += " ".join(f"{x:.2f}" for x in os.getloadavg())
    info = "\n".join(f"- {line}" for line in [f"date: {stamp}", f"machine: {machine}", *head])
    tables = (
        f"Cold load, time to first token:\n\n{markdown_table(cold)}\nSwitching:\n\n{markdown_table(switched)}"
    )
    notes = "\n".join(f"- {line}" for line in lines)
    title = "## Issue 20: models loaded on first request within a budget (bench/residency_bench.py)"
    write_section(path, f"{BEGIN}\n{title}\n\n{info}\n\n{tables}\n{notes}\n{END}", BEGIN, END)
