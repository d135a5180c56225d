"""Issue 20: models loaded on first request within a budget; the appliance against llama-server's router mode.

Run from the repository root:

    .venv/bin/python bench/residency_bench.py [--requests 200] [--clients 4] [--max-loaded 2]
        [--mix 6,3,1] [--cold-repeats 5] [--rounds 1] [--servers appliance,llama-server]
        [--results bench/RESULTS.md] [--json out.json]

Cold load: for each test model (SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M), the time from a streaming request
to a model that is not loaded to its first token: on the appliance once from the plain file (`models add`) and
once from the encrypted store (`models import`), in a home with `keep_alive_s = 0` (each model unloads after
its request); on llama-server in router mode from the same plain file, unloaded through its POST
/models/unload before each request. The appliance's own figure for the wait, the `X-Model-Load-Ms` header,
is shown beside it. Sides alternate within each repeat; the first repeat is discarded (it warms the page
cache and the first worker's imports), the table shows the median of the others.

Switching: three models (the two test models and a copy of SmolLM2's file under a third name), a limit of
two loaded at once (the appliance's `[residency] max_loaded`, llama-server's `--models-max`), closed-loop
clients sending short streaming text completions (Gemma 3 270M is a base model with no chat template), each
naming a model drawn with a fixed seed from a skewed mix.
Latency (to the end of the stream) and TTFT p50/p99, errors, and loads and evictions: the appliance's from
its metrics before and after, llama-server's by polling GET /models. Both run side by side with the same
model files, threads, context and slots; a server's idle models cost nothing (they are not loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

# Run as a script, only bench/ is on sys.path; the shared modules are imported as bench.*.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import docqa_bench, residency_report, servers
from bench.harness import PROMPTS, closed_loop, percentile, print_table
from bench.residency_report import PLAIN_SIDE, ROUTER_SIDE, STORE_SIDE, Switching, Timed
from bench.residency_servers import (
    ROUTER,
    Loaded,
    Running,
    Served,
    Watch,
    appliance_counters,
    appliance_loaded,
    llama_router,
    make_cold,
    models_folder,
    residency_appliance,
    router_loaded,
    router_support,
    unload,
)
from bench.servers import APPLIANCE, LLAMA_SERVER, VENV_BIN, Setup

MODELS_FOLDER = Path(__file__).resolve().parent.parent / ".cache" / "models"
TEST_MODELS = (
    Served("smollm2-135m", MODELS_FOLDER / "SmolLM2-135M-Instruct.Q4_1.gguf"),
    Served("gemma3-270m", MODELS_FOLDER / "gemma-3-270m-q4_k_m.gguf"),
)
THIRD = Served("smollm2-135m-copy", TEST_MODELS[0].path)
"""The switching workload's third model: a byte-for-byte copy of SmolLM2's file under another name."""
STORE = "-store"
LOAD_HEADER = "X-Model-Load-Ms"
SEED = 2020


@dataclass(frozen=True)
class Side:
    """One way of serving a cold model: a label, the server, how to see what it holds, the name suffix."""

    label: str
    running: Running
    loaded: Loaded
    suffix: str = ""


async def timed(client: httpx.AsyncClient, running: Running, name: str, index: int, max_tokens: int) -> Timed:
    """Send one short streaming text completion to `name`, timing it and reading its load-wait header."""
    header: list[str | None] = []
    began = time.perf_counter()
    sample = await docqa_bench.stream_one(
        client,
        running.asking(name),
        # A blank line after the instruction: without it SmolLM2 ends a bare text prompt at once (0 tokens).
        PROMPTS[index % len(PROMPTS)] + "\n\n",
        max_tokens,
        SEED + index,
        opened=lambda response: header.append(response.headers.get(LOAD_HEADER)),
        completion=True,  # Gemma 3 270M is a base model without a chat template: text for every model
    )
    total = (time.perf_counter() - began) * 1000.0
    ttft = None if sample.ttft_s is None else sample.ttft_s * 1000.0
    load = header[0] if header else None
    error = sample.error if sample.error or sample.tokens else "no tokens"
    return Timed(name, ttft, total, None if load is None else int(load), error)


def client_for(args: argparse.Namespace) -> httpx.AsyncClient:
    """An HTTP client with room for every closed-loop client, the watcher, and admin calls."""
    timeout = httpx.Timeout(connect=10.0, read=args.read_timeout, write=10.0, pool=args.batch_timeout)
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=args.clients + 4))


async def cold_loads(sides: list[Side], args: argparse.Namespace) -> dict[str, list[Timed]]:
    """Per side, every measured request to a cold test model; the first repeat is not kept."""
    kept: dict[str, list[Timed]] = {side.label: [] for side in sides}
    async with client_for(args) as client:
        for repeat in range(args.cold_repeats + 1):
            for model in TEST_MODELS:
                shift = repeat % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    name = model.name + side.suffix
                    await make_cold(client, side.running, side.loaded, name)
                    got = await timed(client, side.running, name, repeat, args.max_tokens)
                    shown = "discarded" if repeat == 0 else f"{repeat}/{args.cold_repeats}"
                    ttft = f"TTFT {got.ttft_ms:.0f} ms" if got.ttft_ms is not None else f"error {got.error}"
                    print(f"cold {shown}: {side.label}: {name}: {ttft}", file=sys.stderr, flush=True)
                    if repeat:
                        kept[side.label].append(got)
    return kept


async def start_cold(client: httpx.AsyncClient, running: Running, loaded: Loaded) -> list[str]:
    """Unload what the server holds, where it has a call for it; what stays loaded regardless."""
    for name in sorted(await loaded(client, running)):
        if await unload(client, running, name):
            await make_cold(client, running, loaded, name)
    return sorted(await loaded(client, running))


async def switching(
    client: httpx.AsyncClient, running: Running, sequence: list[str], args: argparse.Namespace
) -> Switching:
    """Run the switching workload once on one server, all its models cold at the start where it can."""
    router = running.target.name == ROUTER
    loaded = router_loaded if router else appliance_loaded
    at_start = await start_cold(client, running, loaded)
    watch = Watch(client, running, loaded)
    await watch.poll()
    before = None if router else await appliance_counters(client, running)
    pending = iter(enumerate(sequence))
    done: list[Timed] = []

    async def user() -> None:
        # Each client sends its next request when its previous one ends: a closed loop.
        for index, name in pending:
            done.append(await timed(client, running, name, index, args.max_tokens))

    poller = asyncio.create_task(watch.run())
    wall, timed_out = await closed_loop(args.clients, user, args.batch_timeout)  # the table flags a cut run
    poller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poller
    await watch.poll()
    if before is None:
        loads, failed, evictions, counted_by = watch.arrivals, 0, watch.departures, "polling GET /models"
    else:
        counted = (await appliance_counters(client, running)).since(before)
        loads, failed, evictions = counted.loads, counted.failed_loads, counted.unloads.get("evicted", 0)
        counted_by = "its metrics" + "".join(f"; {n} unloaded {r}" for r, n in counted.unloads.items())
    answered = [t for t in done if t.error is None]
    latencies = [t.total_ms for t in answered]
    ttfts = [t.ttft_ms for t in answered if t.ttft_ms is not None]
    waits = [t.load_ms for t in done if t.load_ms is not None]
    return Switching(
        server=APPLIANCE if not router else ROUTER,
        requests=len(done),
        errors=len(done) - len(answered),
        latency_p50_ms=round(percentile(latencies, 50), 1),
        latency_p99_ms=round(percentile(latencies, 99), 1),
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p99_ms=round(percentile(ttfts, 99), 1),
        loads=loads,
        failed_loads=failed,
        evictions=evictions,
        counted_by=counted_by,
        most_loaded=watch.most,
        waited=sum(1 for w in waits if w > 0) if waits else None,
        wall_s=round(wall, 2),
        at_start=at_start,
        timed_out=timed_out,
        error_kinds=dict(Counter(t.error for t in done if t.error is not None)),
    )


def draw(names: list[str], weights: list[float], count: int, seed: int) -> list[str]:
    """The model of every request, drawn from the mix with a fixed seed: every server gets the same."""
    return random.Random(seed).choices(names, weights, k=count)  # noqa: S311 - a workload, not a secret


async def measure(
    sides: list[Side], switchers: list[Running], sequence: list[str], args: argparse.Namespace
) -> tuple[dict[str, list[Timed]], list[list[Switching]]]:
    """The cold loads, then the switching rounds (each server once a round, the order rotating)."""
    cold = await cold_loads(sides, args) if args.cold_repeats else {}
    rounds = []
    async with client_for(args) as client:
        for index in range(args.rounds):
            shift = index % len(switchers)
            runs = []
            for running in switchers[shift:] + switchers[:shift]:
                print(
                    f"switching round {index + 1}/{args.rounds}: {running.target.name} ...", file=sys.stderr
                )
                got = await switching(client, running, sequence, args)
                shown = f"p50 {got.latency_p50_ms:.0f} ms, p99 {got.latency_p99_ms:.0f} ms, {got.loads} loads"
                print(
                    f"  {shown}, {got.evictions} evictions, {got.errors} errors", file=sys.stderr, flush=True
                )
                runs.append(got)
            rounds.append(runs)
    return cold, rounds


@contextlib.contextmanager
def started(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[list[Side], list[Running]]]:
    """Start the servers (the appliance's cold and switching homes, the router): cold sides and switchers."""
    placed = models_folder(tmp / "models", [*TEST_MODELS, THIRD], {THIRD.name: THIRD.path})
    context = min(servers.served_context(m.path, args.context_length) for m in placed)
    python = VENV_BIN / "python"
    setup = Setup(
        placed[0].path, args.threads, context, args.slots, args.appliance, python, args.llama_server
    )
    residency = f"load_timeout_s = {args.load_timeout_s}\n"
    tested = placed[: len(TEST_MODELS)]
    cold_models = [*tested, *(Served(m.name + STORE, m.path, encrypted=True) for m in tested)]
    budget = f"max_loaded = {args.max_loaded}\nkeep_alive_s = {args.keep_alive_s}\n"
    budget += f"ram_budget_gib = {args.ram_budget_gib}\n" if args.ram_budget_gib is not None else ""
    with contextlib.ExitStack() as stack:
        sides: list[Side] = []
        switchers: list[Running] = []
        for name in args.servers:
            folder = tmp / name
            folder.mkdir()
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            if name == APPLIANCE:
                cold_home = residency + "keep_alive_s = 0\n"
                cold = stack.enter_context(residency_appliance(setup, folder, cold_models, cold_home, name))
                sides += [
                    Side(PLAIN_SIDE, cold, appliance_loaded),
                    Side(STORE_SIDE, cold, appliance_loaded, STORE),
                ]
                (folder / "switching").mkdir()
                switchers.append(
                    stack.enter_context(
                        residency_appliance(setup, folder / "switching", placed, residency + budget, name)
                    )
                )
            else:
                router = stack.enter_context(
                    llama_router(setup, folder, tmp / "models", args.max_loaded, args.router_offline)
                )
                sides.append(Side(ROUTER_SIDE, router, router_loaded))
                switchers.append(router)
        yield sides, switchers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; the defaults are the issue's figures."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=2048, help="total per model, shared by slots")
    parser.add_argument("--slots", type=int, default=4, help="parallel sequences per model")
    parser.add_argument("--requests", type=int, default=200, help="switching requests per server and round")
    parser.add_argument(
        "--clients", type=int, default=4, help="closed-loop clients of the switching workload"
    )
    parser.add_argument("--max-loaded", type=int, default=2, help="models loaded at once (both servers)")
    parser.add_argument("--ram-budget-gib", type=float, default=None, help="the appliance's RAM budget too")
    parser.add_argument("--keep-alive-s", type=float, default=600.0, help="the switching home's idle time")
    parser.add_argument("--load-timeout-s", type=float, default=120.0)
    parser.add_argument("--mix", default="6,3,1", help="weights of smollm2, gemma3 and the smollm2 copy")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the models' draw")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cold-repeats", type=int, default=5, help="measured cold loads per model and side")
    parser.add_argument("--rounds", type=int, default=1, help="switching rounds; the median p50 is shown")
    parser.add_argument("--servers", default=f"{APPLIANCE},{LLAMA_SERVER}", help="which to run")
    servers.add_run_flags(parser, read_timeout=300.0, batch_timeout=1800.0, batch="one switching run")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - {APPLIANCE, LLAMA_SERVER}:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {APPLIANCE}, {LLAMA_SERVER}")
    args.mix = [float(w) for w in args.mix.split(",")]
    if len(args.mix) != 3 or min(args.mix) < 0 or sum(args.mix) <= 0:
        parser.error("--mix takes three weights, not negative, not all 0")
    if missing := [m.path for m in TEST_MODELS if not m.path.is_file()]:
        parser.error(f"test models not found: {', '.join(map(str, missing))}")
    if args.requests < 1 or args.clients < 1 or args.rounds < 1 or args.cold_repeats < 0:
        parser.error("--requests, --clients and --rounds must be at least 1, --cold-repeats at least 0")
    args.llama_server = servers.find_llama_server(args.llama_server)
    args.router_missing, help_text = router_support(args.llama_server)
    args.router_offline = "--offline" in help_text
    if LLAMA_SERVER in args.servers and args.router_missing:
        args.servers.remove(LLAMA_SERVER)  # said in the output: the appliance runs alone
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables and the claims, and write what was asked for."""
    args = parse_args(argv)
    # SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the servers' finally blocks stop them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    names = [m.name for m in (*TEST_MODELS, THIRD)]
    sequence = draw(names, args.mix, args.requests, args.seed)
    header = residency_report.header(args, names, sequence, f"a copy of {TEST_MODELS[0].path.name}")
    print("\n".join(header), flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="residency-bench-") as tmp,
        started(args, Path(tmp)) as (sides, runs),
    ):
        cold, rounds = asyncio.run(measure(sides, runs, sequence, args))
    switched = [
        sorted(runs_of, key=lambda s: s.latency_p50_ms)[len(runs_of) // 2]
        for runs_of in ([r for got in rounds for r in got if r.server == s] for s in (APPLIANCE, ROUTER))
        if runs_of
    ]
    cold_rows = residency_report.cold_table(cold, [m.name for m in TEST_MODELS], STORE)
    switch_rows = residency_report.switching_table(switched)
    claims = residency_report.claims(cold, switched, args, [m.name for m in TEST_MODELS], STORE)
    for rows in (cold_rows, switch_rows):
        print_table(rows)
        print()
    print("\n".join(claims))
    if args.results is not None:
        residency_report.write(args.results, header, cold_rows, switch_rows, claims)
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        doc = {
            "config": config,
            "sequence": sequence,
            "cold": {side: [asdict(t) for t in got] for side, got in cold.items()},
            "switching_rounds": [[asdict(s) for s in got] for got in rounds],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
