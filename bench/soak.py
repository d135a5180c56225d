"""Soak: N minutes at concurrency C against a real appliance, mixed endpoints, some clients hanging up.

    .venv/bin/python -m bench.soak --minutes 2 --concurrency 8

Each minute prints the requests by outcome class, p50/p99 latency of completed requests, and the RSS and
open file descriptors of the gateway and of each worker (from /proc). The run ends with the figures the
issue asks for: 5xx count, RSS growth after the first (warm-up) minute, and file descriptor drift.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import percentile
from bench.servers import ALIAS, DEFAULT_MODEL, VENV_BIN, cli, free_port, start, stop, wait_ready

PAGE = os.sysconf("SC_PAGE_SIZE")
MIX = [("chat-stream", 35), ("chat", 20), ("completions", 15), ("embeddings", 15), ("models", 15)]
RNG = random.Random(1)  # noqa: S311 - load shaping, not security; seeded so runs repeat
PROMPTS = [
    "Tell me about the sea.",
    "Write a short poem about bread.",
    "What is a lighthouse?",
    "Count to ten.",
]


@dataclass
class Minute:
    """What happened to the requests that started in one minute of the run."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Appliance:
    """A running appliance: its URL, keys and the gateway's pid."""

    base_url: str
    user: dict[str, str]
    admin: dict[str, str]
    gateway_pid: int


@dataclass(frozen=True)
class Sample:
    """Memory and descriptors of one process."""

    name: str
    pid: int
    rss_mib: float
    fds: int


def sample(name: str, pid: int) -> Sample | None:
    """RSS (from /proc/PID/statm) and open descriptors (/proc/PID/fd) of a live process."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return Sample(name, pid, resident * PAGE / 2**20, fds)


async def processes(http: httpx.AsyncClient, appliance: Appliance) -> list[Sample]:
    """The gateway and every worker the admin API lists, sampled now."""
    found = [sample("gateway", appliance.gateway_pid)]
    with contextlib.suppress(httpx.HTTPError):
        engines = (await http.get("/admin/engines", headers=appliance.admin)).json()["data"]
        found += [sample(f"worker:{e['model']}", e["pid"]) for e in engines if e.get("pid")]
    return [s for s in found if s is not None]


def _classify(status: int) -> str:
    if status == 200:
        return "ok"
    return "429" if status == 429 else f"{status // 100}xx:{status}"


async def _request(http: httpx.AsyncClient, kind: str, hang_up: bool, max_tokens: int) -> tuple[str, bool]:
    """One request of `kind`; returns (outcome class, whether it completed so its latency counts)."""
    prompt = RNG.choice(PROMPTS)
    if kind == "models":
        return _classify((await http.get("/v1/models")).status_code), True
    if kind == "embeddings":
        return _classify(
            (await http.post("/v1/embeddings", json={"model": "default", "input": prompt})).status_code
        ), True
    if kind == "completions":
        body: dict[str, object] = {"model": "default", "prompt": prompt, "max_tokens": max_tokens}
        return _classify((await http.post("/v1/completions", json=body)).status_code), True
    messages = [{"role": "user", "content": prompt}]
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens, "temperature": 0.8}
    if kind == "chat":
        return _classify((await http.post("/v1/chat/completions", json=body)).status_code), True
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            await response.aread()
            return _classify(response.status_code), True
        leave_after = RNG.randint(1, 6) if hang_up else None
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if '"error"' in line:
                return "stream-error", True
            events += 1
            if leave_after is not None and events >= leave_after:
                return "hung-up", False  # leaving the block closes the connection mid-stream
    return "ok", True


async def client(
    http: httpx.AsyncClient,
    hang_up: bool,
    started: float,
    until: float,
    minutes: list[Minute],
    max_tokens: int,
) -> None:
    """Send requests back to back until the end of the run; a hanging-up client leaves its streams early."""
    kinds, weights = zip(*MIX, strict=True)
    while (now := time.monotonic()) < until:
        kind = RNG.choices(kinds, weights)[0]
        minute = minutes[min(int((now - started) // 60), len(minutes) - 1)]
        try:
            outcome, completed = await _request(http, kind, hang_up, max_tokens)
        except httpx.HTTPError as error:
            outcome, completed = f"transport:{type(error).__name__}", False
        minute.outcomes[outcome] += 1
        if completed and outcome == "ok":
            minute.latencies.append(time.monotonic() - now)


def report(index: int, minute: Minute, samples: list[Sample]) -> str:
    """One line per minute: outcomes, latency percentiles, and each process's RSS and descriptors."""
    latencies = minute.latencies or [0.0]
    outcomes = " ".join(f"{name}={count}" for name, count in sorted(minute.outcomes.items()))
    procs = "  ".join(f"{s.name}[{s.pid}] rss={s.rss_mib:.1f}MiB fds={s.fds}" for s in samples)
    return (
        f"minute {index + 1}: requests={sum(minute.outcomes.values())} {outcomes} | "
        f"p50={percentile(latencies, 50) * 1000:.0f}ms p99={percentile(latencies, 99) * 1000:.0f}ms | {procs}"
    )


async def soak(
    appliance: Appliance, minutes: float, concurrency: int, hang_up_share: float, max_tokens: int
) -> int:
    """Run the load, print a line per minute and a summary; the exit status is 1 if any 5xx was seen."""
    count = max(1, int(-(-minutes // 1)))
    buckets = [Minute() for _ in range(count)]
    started = time.monotonic()
    until = started + minutes * 60
    hangers = round(concurrency * hang_up_share)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=appliance.base_url, headers=appliance.user, timeout=120, limits=limits
    ) as http:
        first = await processes(http, appliance)
        print(
            "start:    " + "  ".join(f"{s.name}[{s.pid}] rss={s.rss_mib:.1f}MiB fds={s.fds}" for s in first)
        )
        clients = [
            asyncio.create_task(client(http, i < hangers, started, until, buckets, max_tokens))
            for i in range(concurrency)
        ]
        samples: list[list[Sample]] = []
        for index in range(count):
            await asyncio.sleep(max(0.0, min(started + (index + 1) * 60, until) - time.monotonic()))
            if index == count - 1:
                await asyncio.gather(*clients)  # the last minute's requests finish before its line
            samples.append(await processes(http, appliance))
            print(report(index, buckets[index], samples[-1]), flush=True)
    return summary(buckets, samples)


def summary(buckets: list[Minute], samples: list[list[Sample]]) -> int:
    """Totals over the run and the drift of RSS and descriptors from the end of minute 1 to the end."""
    total = sum((b.outcomes for b in buckets), Counter[str]())
    server_errors = sum(n for name, n in total.items() if name.startswith("5xx") or name == "stream-error")
    print(f"total: {dict(sorted(total.items()))}; 5xx and stream errors: {server_errors}")
    warm, last = {s.name: s for s in samples[0]}, {s.name: s for s in samples[-1]}
    for name in sorted(warm.keys() & last.keys()):
        growth = (last[name].rss_mib - warm[name].rss_mib) / warm[name].rss_mib * 100
        print(
            f"{name}: rss {warm[name].rss_mib:.1f} -> {last[name].rss_mib:.1f} MiB "
            f"({growth:+.1f}% after warm-up), "
            f"fds {warm[name].fds} -> {last[name].fds}, pid {warm[name].pid} -> {last[name].pid}"
        )
    return 1 if server_errors else 0


@contextlib.contextmanager
def serve(model: Path, threads: int, context: int, slots: int, tmp: Path) -> Iterator[Appliance]:
    """A fresh appliance home set up through the CLI as a user would, served until the block ends."""
    home, port, exe = tmp / "home", free_port(), str(VENV_BIN / "appliance")
    home.mkdir()
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    workers = f"threads = {threads}\ncontext_length = {context}\n" + (
        f"parallel = {slots}\n" if slots else ""
    )
    (home / "settings.toml").write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n[workers]\n{workers}')
    cli([exe, "models", "add", str(model), "--name", ALIAS, "--alias", "default"], env)
    user = cli([exe, "keys", "create", "--name", "soak", "--role", "user", "--quiet"], env).strip()
    admin = cli([exe, "keys", "create", "--name", "soak-admin", "--role", "admin", "--quiet"], env).strip()
    log = tmp / "appliance.log"
    proc = start([exe, "serve"], env, log)
    appliance = Appliance(
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {user}"},
        {"Authorization": f"Bearer {admin}"},
        proc.pid,
    )
    try:
        wait_ready(proc, f"{appliance.base_url}/health/ready", appliance.user, log)
        yield appliance
    finally:
        stop(proc)
        tail = log.read_text(errors="replace")
        if "Traceback" in tail:
            print(f"the appliance logged a traceback; log: {log}\n{tail[-3000:]}", file=sys.stderr)


def main() -> None:
    """Parse arguments, start an appliance, soak it, and exit 1 if any 5xx was seen."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--hang-up-share", type=float, default=0.2, help="share of clients that leave streams early"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    RNG.seed(args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        serve(args.model, args.threads, args.context, args.slots, Path(tmp)) as appliance,
    ):
        status = asyncio.run(
            soak(appliance, args.minutes, args.concurrency, args.hang_up_share, args.max_tokens)
        )
    raise SystemExit(status)


if __name__ == "__main__":
    main()
