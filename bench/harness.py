"""Shared load driver of the serving benchmarks: streaming requests, per-batch figures, result tables."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import msgspec

from bench.servers import SERVERS, Setup, Target

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Write a long story about a robot learning to bake bread in a small village.",
    "Write a long, detailed essay on the history of the printing press.",
    "Write a long story about two friends crossing a desert on camels.",
    "Explain in great detail how a steam engine works, step by step.",
    "Write a long story about a cat who becomes the mayor of a seaside town.",
    "Write a long letter from a sailor to his family describing a year at sea.",
    "Write a long, detailed guide to growing tomatoes in a cold climate.",
]


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Usage(msgspec.Struct):
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


@dataclass(frozen=True)
class Load:
    """How each batch is driven: output length, sampling, batch size and time bounds."""

    max_tokens: int
    temperature: float
    requests: int  # per batch; 0 means max(8, per_user x concurrency)
    per_user: int
    read_timeout: float
    batch_timeout: float

    def count(self, conc: int) -> int:
        """Requests to send in the batch at concurrency `conc`."""
        return self.requests or max(8, self.per_user * conc)


@dataclass(frozen=True)
class Sample:
    """One streamed request: seconds to first content, seconds to end, output tokens."""

    ttft_s: float | None
    total_s: float
    tokens: int
    from_usage: bool


@dataclass(frozen=True)
class Figures:
    """Aggregate figures for one (server, concurrency) batch."""

    server: str
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    tok_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    mean_tokens: float
    tokens_from_usage: bool
    timed_out: bool


async def closed_loop(
    clients: int, user: Callable[[], Coroutine[Any, Any, None]], timeout_s: float
) -> tuple[float, bool]:
    """Run `clients` copies of `user` at once until all end or `timeout_s` passes: the wall seconds and
    whether it was cut (what finished is kept, so a slow run still reports)."""
    began, timed_out = time.perf_counter(), False
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for _ in range(clients):
                group.create_task(user())
    except TimeoutError:
        timed_out = True
    return time.perf_counter() - began, timed_out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def stream_one(
    client: httpx.AsyncClient, target: Target, index: int, load: Load, max_tokens: int
) -> Sample:
    """Send one streaming chat completion and time its first content chunk and its end."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": load.temperature,
        "seed": 1000 + index % len(PROMPTS),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ttft: float | None = None
    chunks, usage_tokens = 0, None
    began = time.perf_counter()
    url = f"{target.base_url}/v1/chat/completions"
    async with client.stream("POST", url, json=body, headers=target.headers) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            raise RuntimeError(f"{target.name}: HTTP {resp.status_code}: {text[:500]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = _decode_chunk(payload)
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if any(choice.delta.content for choice in chunk.choices):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - began
    total = time.perf_counter() - began
    if usage_tokens is not None:
        return Sample(ttft, total, usage_tokens, True)
    return Sample(ttft, total, chunks, False)


def aggregate(name: str, conc: int, samples: list[Sample], wall: float, timed_out: bool) -> Figures:
    """Figures for one batch; TPOT is (total - TTFT) / (tokens - 1) per request, then the median."""
    tokens = sum(s.tokens for s in samples)
    ttfts = [s.ttft_s * 1000.0 for s in samples if s.ttft_s is not None]
    tpots = [
        (s.total_s - s.ttft_s) * 1000.0 / (s.tokens - 1)
        for s in samples
        if s.ttft_s is not None and s.tokens > 1
    ]
    return Figures(
        server=name,
        concurrency=conc,
        requests=len(samples),
        output_tokens=tokens,
        wall_s=round(wall, 3),
        tok_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p99_ms=round(percentile(ttfts, 99), 1),
        tpot_p50_ms=round(percentile(tpots, 50), 2),
        mean_tokens=round(tokens / max(1, len(samples)), 1),
        tokens_from_usage=all(s.from_usage for s in samples),
        timed_out=timed_out,
    )


async def run_batch(http: httpx.AsyncClient, target: Target, load: Load, conc: int) -> Figures:
    """Warm up, then run the batch with `conc` requests in flight, and aggregate it."""
    await stream_one(http, target, 0, load, min(16, load.max_tokens))
    pending = iter(range(load.count(conc)))
    samples: list[Sample] = []

    async def worker() -> None:
        # Each worker takes the next index when its previous request ends: a closed loop of `conc` users.
        for index in pending:
            samples.append(await stream_one(http, target, index, load, load.max_tokens))

    wall, timed_out = await closed_loop(conc, worker, load.batch_timeout)
    if timed_out:  # what finished is kept; the table flags the batch
        print(f"{target.name} c={conc}: batch cut at {load.batch_timeout:.0f} s", file=sys.stderr)
    return aggregate(target.name, conc, samples, wall, timed_out)


async def bench(target: Target, load: Load, concurrency: list[int]) -> list[Figures]:
    """Run every concurrency level against one server."""
    timeout = httpx.Timeout(connect=10.0, read=load.read_timeout, write=10.0, pool=load.batch_timeout)
    limits = httpx.Limits(max_connections=max(concurrency) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return [await run_batch(client, target, load, conc) for conc in concurrency]


def _terminate(signum: int, _frame: Any) -> NoReturn:
    # Turn SIGTERM into an exception so the servers' finally blocks run.
    raise SystemExit(128 + signum)


def run_servers(
    names: list[str], setup: Setup, load: Load, concurrency: list[int], rounds: int = 1
) -> list[Figures]:
    """Benchmark the named servers at every concurrency; one figure per server and concurrency.

    With one round each server runs alone on the machine, one after another. With more, all of them are
    started together (an idle server costs nothing) and every round measures each concurrency on each server
    back to back, the order rotating per round, so that a slow minute of a shared machine hits every server
    alike; each figure is then the round with the median tok/s.
    """
    signal.signal(signal.SIGTERM, _terminate)
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp_name:
        if rounds <= 1:
            for name in names:
                print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
                with SERVERS[name](setup, Path(tmp_name)) as target:
                    figures += asyncio.run(bench(target, load, concurrency))
            return figures
        with contextlib.ExitStack() as stack:
            targets = []
            for name in names:
                print(f"starting {name} ...", file=sys.stderr, flush=True)
                targets.append(stack.enter_context(SERVERS[name](setup, Path(tmp_name))))
            return asyncio.run(_interleaved(targets, load, concurrency, rounds))


async def _interleaved(
    targets: list[Target], load: Load, concurrency: list[int], rounds: int
) -> list[Figures]:
    timeout = httpx.Timeout(connect=10.0, read=load.read_timeout, write=10.0, pool=load.batch_timeout)
    limits = httpx.Limits(max_connections=max(concurrency) + 1)
    measured: dict[tuple[str, int], list[Figures]] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=timeout, limits=limits))
            for _ in targets
        ]
        for round_index in range(rounds):
            for conc in concurrency:
                order = list(range(len(targets)))
                shift = round_index % len(order)
                for i in order[shift:] + order[:shift]:
                    print(
                        f"round {round_index + 1}/{rounds}: {targets[i].name} c={conc}",
                        file=sys.stderr,
                        flush=True,
                    )
                    batch = await run_batch(clients[i], targets[i], load, conc)
                    print(
                        f"  {batch.tok_per_s:.1f} tok/s, TPOT p50 {batch.tpot_p50_ms:.2f} ms", file=sys.stderr
                    )
                    measured.setdefault((targets[i].name, conc), []).append(batch)
    return [sorted(runs, key=lambda f: f.tok_per_s)[len(runs) // 2] for runs in measured.values()]


def ratios(figures: list[Figures], ours: str, base: str) -> dict[int, float]:
    """tok/s of `ours` over `base` per concurrency where both were measured."""
    rate = {(f.server, f.concurrency): f.tok_per_s for f in figures}
    concs = sorted({f.concurrency for f in figures})
    return {
        c: round(rate[(ours, c)] / rate[(base, c)], 3)
        for c in concs
        if rate.get((base, c)) and (ours, c) in rate
    }


def table(figures: list[Figures], order: list[str], base: str | None) -> list[list[str]]:
    """Header and rows: concurrency, server, tok/s, TTFT p50/p99, TPOT p50, tok/req, and x `base`."""
    header = ["concurrency", "server", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "tok/req"]
    header += [f"x {base}"] if base else []
    rate = {(f.server, f.concurrency): f.tok_per_s for f in figures}
    rows = [header]
    rank = {name: i for i, name in enumerate(order)}
    for f in sorted(figures, key=lambda f: (f.concurrency, rank.get(f.server, len(order)))):
        row = [str(f.concurrency), f.server + (" (cut)" if f.timed_out else "")]
        row += [f"{x:.1f}" for x in (f.tok_per_s, f.ttft_p50_ms, f.ttft_p99_ms)]
        row += [f"{f.tpot_p50_ms:.2f}", f"{f.mean_tokens:.1f}"]
        if base:
            base_rate = rate.get((base, f.concurrency))
            row.append(f"{f.tok_per_s / base_rate:.2f}" if base_rate else "-")
        rows.append(row)
    return rows


def print_table(rows: list[list[str]]) -> None:
    """Print rows as aligned text: first two columns left-aligned, figures right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))


def markdown_table(rows: list[list[str]]) -> str:
    """The same rows as a GitHub markdown table."""
    align = ["---", "---"] + ["---:"] * (len(rows[0]) - 2)
    return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], align, *rows[1:]]) + "\n"


def write_section(path: Path, text: str, begin: str, end: str) -> None:
    """Replace the section of `path` between the `begin` and `end` markers with `text` (which carries
    them), or append it; the rest of the file stays as it is."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)
    print(f"wrote {path}", file=sys.stderr)
