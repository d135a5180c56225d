"""CPU the appliance spends relaying tokens, with every step streamed alone (stream_interval 1) against the
default (auto: at most every 25 ms, two steps' text per event from 4 busy slots on), side by side in one run.

    .venv/bin/python bench/relay_cpu_bench.py [--rounds 2] [--concurrency 8] [--requests 48]

Throughput on this shared 2-core VM swings by ±10% between batches, too much to see a few percent; CPU seconds
per token read from /proc for the gateway and the worker processes do not depend on what else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

# Run as a script, only bench/ is on sys.path; the shared harness is imported as bench.harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import Load, stream_one
from bench.servers import Setup, Target, appliance_server

MODEL = Path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
INTERVALS = {"every step (1)": 1, "auto (0)": 0}


@dataclass(frozen=True)
class Reading:
    """One batch: tokens, wall seconds, and CPU seconds of the gateway and of its workers."""

    tokens: int
    wall_s: float
    gateway_s: float
    workers_s: float


def _processes_of(home: Path) -> tuple[int, list[int]]:
    """(the gateway's pid, its workers' pids): the processes whose environment names this home."""
    marker = f"APPLIANCE_HOME={home}".encode()
    gateway, workers = 0, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in command:
            gateway = int(entry.name)
        elif any(b"appliance.engines" in part for part in command):
            workers.append(int(entry.name))
    return gateway, workers


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _batch(target: Target, load: Load, conc: int) -> int:
    """`load.requests` streamed requests, `conc` at a time; the output tokens they got."""
    tokens: list[int] = []
    pending = iter(range(load.requests))
    async with httpx.AsyncClient(timeout=httpx.Timeout(load.read_timeout, connect=10.0)) as http:

        async def user() -> None:
            for index in pending:
                tokens.append((await stream_one(http, target, index, load, load.max_tokens)).tokens)

        await asyncio.gather(*(user() for _ in range(conc)))
    return sum(tokens)


def measure(setup: Setup, interval: int, load: Load, conc: int) -> Reading:
    """Serve a fresh appliance with this stream interval, warm it up, and read one batch's CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        chosen = replace(setup, appliance_workers=f"stream_interval = {interval}\n")
        with appliance_server(chosen, Path(tmp)) as target:
            gateway, workers = _processes_of(Path(tmp) / "appliance-home")
            asyncio.run(_batch(target, replace(load, requests=conc), conc))
            before = [_cpu_s(pid) for pid in (gateway, *workers)]
            began = time.perf_counter()
            tokens = asyncio.run(_batch(target, load, conc))
            wall = time.perf_counter() - began
            after = [_cpu_s(pid) for pid in (gateway, *workers)]
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return Reading(tokens, wall, spent[0], sum(spent[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    appliance = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "appliance"
    setup = Setup(MODEL.resolve(), args.threads, 16 * 512, 16, appliance.resolve(), Path("python3"), None)
    load = Load(args.max_tokens, 0.0, args.requests, 2, read_timeout=120.0, batch_timeout=900.0)
    readings: dict[str, list[Reading]] = {name: [] for name in INTERVALS}
    for round_ in range(args.rounds):
        for name, interval in INTERVALS.items():
            reading = measure(setup, interval, load, args.concurrency)
            readings[name].append(reading)
            print(f"round {round_ + 1}: {name}: {reading}", flush=True)
    print(f"\nc={args.concurrency}, {args.requests} requests x {args.max_tokens} tokens, SmolLM2-135M Q4_1")
    print(f"{'stream interval':16}  {'tok/s':>7}  {'gateway ms CPU/token':>20}  {'workers ms CPU/token':>20}")
    for name, taken in readings.items():
        tokens = sum(r.tokens for r in taken)
        rate = tokens / sum(r.wall_s for r in taken)
        gateway = 1000 * sum(r.gateway_s for r in taken) / tokens
        workers = 1000 * sum(r.workers_s for r in taken) / tokens
        print(f"{name:16}  {rate:7.1f}  {gateway:20.3f}  {workers:20.3f}")


if __name__ == "__main__":
    main()
