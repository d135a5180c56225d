"""Streaming chat benchmark: the appliance against llama-cpp-python's bundled server, same model and threads.

Run from the repository root:

    .venv/bin/python bench/serve_bench.py [--model PATH] [--threads 2] [--context-length 4096]
        [--concurrency 1,4] [--requests N] [--max-tokens 128] [--servers appliance,llama_cpp.server]
        [--json out.json]

It starts each server in turn as a subprocess (never both at once, so they do not share the cores),
sends the same streaming chat completions over raw httpx, and prints output tokens/s, TTFT p50/p99 and
TPOT p50 per server and concurrency. The peer needs llama-cpp-python's server extras (fastapi,
sse-starlette, starlette-context, pydantic-settings) importable by the peer's Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

# Run as a script, only bench/ is on sys.path; the shared harness is imported as bench.harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Figures, Load, print_table, ratios, run_servers, table
from bench.servers import APPLIANCE, DEFAULT_MODEL, PEER, VENV_BIN, Setup

OURS = APPLIANCE


def report(figures: list[Figures]) -> dict[str, float]:
    """Print the side-by-side table and return tok/s ratios (ours / peer) per concurrency."""
    print_table(table(figures, [OURS, PEER], None))
    ratio = {f"c={conc}": value for conc, value in ratios(figures, OURS, PEER).items()}
    if ratio:
        listed = ", ".join(f"{key} {value:.2f}" for key, value in ratio.items())
        print(f"ratio ({OURS} / {PEER}) tok/s: {listed}")
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file both servers load")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--requests", type=int, default=0, help="per batch; default 8 x concurrency")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--servers", default=f"{OURS},{PEER}", help="which to run, in this order")
    parser.add_argument("--appliance", type=Path, default=VENV_BIN / "appliance", help="appliance CLI")
    parser.add_argument("--peer-python", type=Path, default=VENV_BIN / "python", help="Python for the peer")
    parser.add_argument("--read-timeout", type=float, default=120.0, help="seconds between stream bytes")
    parser.add_argument("--batch-timeout", type=float, default=900.0, help="seconds for one whole batch")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - {OURS, PEER}:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {OURS}, {PEER}")
    if not args.model.is_file():
        parser.error(f"model {args.model} not found")
    return args


def main(argv: list[str] | None = None) -> int:
    """Benchmark each chosen server in turn, print the table, and optionally write JSON."""
    args = parse_args(argv)
    # Issue 2's comparison: the appliance picks its own slots; sampling at temperature 0.7.
    setup = Setup(args.model, args.threads, args.context_length, 0, args.appliance, args.peer_python, None)
    load = Load(args.max_tokens, 0.7, args.requests, 8, args.read_timeout, args.batch_timeout)
    figures = run_servers(args.servers, setup, load, args.concurrency)
    ratio = report(figures)
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        doc = {"config": config, "results": [asdict(f) for f in figures], "ratios": ratio}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
