"""Streaming chat benchmark: the appliance against llama-cpp-python's bundled server, same model and threads.

Run from the repository root:

    .venv/bin/python bench/serve_bench.py [--model PATH] [--threads 2] [--context-length 4096]
        [--concurrency 1,4] [--requests N] [--max-tokens 128] [--servers appliance,llama_cpp.server]
        [--json out.json]

It starts each server in turn as a subprocess (never both at once, so they do not share the cores),
sends the same streaming chat completions over raw httpx, and prints output tokens/s and TTFT p50/p99
per server and concurrency. The peer needs llama-cpp-python's server extras (fastapi, sse-starlette,
starlette-context, pydantic-settings) importable by the peer's Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import msgspec

VENV_BIN = Path(sys.executable).parent
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OURS, PEER = "appliance", "llama_cpp.server"
ALIAS = "smollm2-135m"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 120.0
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
class Target:
    """A running server: where to send requests and which model name to ask for."""

    name: str
    base_url: str
    model: str
    headers: dict[str, str]


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
    mean_tokens: float
    tokens_from_usage: bool


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, its output going to a log file."""
    with log.open("wb") as out:
        # A new session keeps a terminal Ctrl-C away from the server, so shutdown is ours to order.
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT the server's process group, then SIGKILL it if it has not exited in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    # Also reaps anything the server left behind in its group (its model workers) if it died first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT_S)


def fail(message: str, log: Path | None = None) -> NoReturn:
    """Stop the run with a message and the tail of a server log."""
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise SystemExit(f"serve_bench: {message}\n{tail}")


def wait_ready(proc: subprocess.Popen[bytes], url: str, headers: dict[str, str], log: Path) -> None:
    """Poll url until it answers 200, the process dies, or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                fail(f"server exited with {proc.returncode} before it was ready", log)
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url, headers=headers).status_code == 200:
                    return
            time.sleep(0.25)
    fail(f"{url} not ready within {READY_TIMEOUT_S:.0f} s", log)


def cli(argv: list[str], env: dict[str, str]) -> str:
    """Run one appliance CLI command and return its stdout."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    if done.returncode != 0:
        fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def appliance_server(args: argparse.Namespace, tmp: Path) -> Iterator[Target]:
    """Set up a fresh appliance home exactly as a user would, serve it, and stop it on exit."""
    home, port, exe = tmp / "appliance-home", free_port(), str(args.appliance)
    home.mkdir()
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    cli([exe, "init"], env)
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[workers]\nthreads = {args.threads}\ncontext_length = {args.context_length}\n"
    )
    cli([exe, "models", "add", str(args.model), "--name", ALIAS, "--alias", "default"], env)
    key = cli([exe, "keys", "create", "--name", "bench", "--role", "user", "--quiet"], env).strip()
    headers = {"Authorization": f"Bearer {key}"}
    log = tmp / "appliance.log"
    proc = start([exe, "serve"], env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/health/ready", headers, log)
        yield Target(OURS, base, "default", headers)
    finally:
        stop(proc)


@contextlib.contextmanager
def peer_server(args: argparse.Namespace, tmp: Path) -> Iterator[Target]:
    """Serve the same model with llama-cpp-python's bundled server, and stop it on exit."""
    port, threads = free_port(), str(args.threads)
    argv = [str(args.peer_python), "-m", "llama_cpp.server", "--model", str(args.model)]
    argv += ["--model_alias", ALIAS, "--n_threads", threads, "--n_threads_batch", threads]
    argv += ["--n_ctx", str(args.context_length), "--host", "127.0.0.1", "--port", str(port)]
    # Queue concurrent requests instead of aborting the running one; quiet logs cost the peer nothing extra.
    argv += ["--interrupt_requests", "False", "--verbose", "False"]
    log = tmp / "peer.log"
    proc = start(argv, dict(os.environ), log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/v1/models", {}, log)
        yield Target(PEER, base, ALIAS, {})
    finally:
        stop(proc)


async def stream_one(client: httpx.AsyncClient, target: Target, index: int, max_tokens: int) -> Sample:
    """Send one streaming chat completion and time its first content chunk and its end."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
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


async def run_batch(http: httpx.AsyncClient, target: Target, args: argparse.Namespace, conc: int) -> Figures:
    """Warm up, then run the batch with `conc` requests in flight, and aggregate it."""
    await stream_one(http, target, 0, min(16, args.max_tokens))
    count = args.requests or max(8, 8 * conc)
    pending = iter(range(count))
    samples: list[Sample] = []

    async def worker() -> None:
        # Each worker takes the next index when its previous request ends: a closed loop of `conc` users.
        for index in pending:
            samples.append(await stream_one(http, target, index, args.max_tokens))

    began = time.perf_counter()
    async with asyncio.timeout(args.batch_timeout), asyncio.TaskGroup() as group:
        for _ in range(conc):
            group.create_task(worker())
    wall = time.perf_counter() - began
    tokens = sum(s.tokens for s in samples)
    ttfts = [s.ttft_s * 1000.0 for s in samples if s.ttft_s is not None]
    return Figures(
        server=target.name,
        concurrency=conc,
        requests=len(samples),
        output_tokens=tokens,
        wall_s=round(wall, 3),
        tok_per_s=round(tokens / wall, 2),
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p99_ms=round(percentile(ttfts, 99), 1),
        mean_tokens=round(tokens / max(1, len(samples)), 1),
        tokens_from_usage=all(s.from_usage for s in samples),
    )


async def bench(target: Target, args: argparse.Namespace) -> list[Figures]:
    """Run every concurrency level against one server."""
    timeout = httpx.Timeout(connect=10.0, read=args.read_timeout, write=10.0, pool=args.batch_timeout)
    limits = httpx.Limits(max_connections=max(args.concurrency) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return [await run_batch(client, target, args, conc) for conc in args.concurrency]


def report(figures: list[Figures]) -> dict[str, float]:
    """Print the side-by-side table and return tok/s ratios (ours / peer) per concurrency."""
    row = "{:<12} {:<18} {:>10} {:>12} {:>12} {:>8}"
    print(row.format("concurrency", "server", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "tok/req"))
    for f in sorted(figures, key=lambda f: (f.concurrency, f.server != OURS)):
        cells = (f.tok_per_s, f.ttft_p50_ms, f.ttft_p99_ms, f.mean_tokens)
        print(row.format(f.concurrency, f.server, *(f"{x:.1f}" for x in cells)))
    rate = {(f.server, f.concurrency): f.tok_per_s for f in figures}
    ratios = {
        f"c={conc}": round(rate[(OURS, conc)] / rate[(PEER, conc)], 3)
        for conc in sorted({f.concurrency for f in figures})
        if rate.get((PEER, conc)) and (OURS, conc) in rate
    }
    if ratios:
        listed = ", ".join(f"{key} {value:.2f}" for key, value in ratios.items())
        print(f"ratio ({OURS} / {PEER}) tok/s: {listed}")
    return ratios


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


def _terminate(signum: int, _frame: Any) -> NoReturn:
    # Turn SIGTERM into an exception so the servers' finally blocks run.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Benchmark each chosen server in turn, print the table, and optionally write JSON."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for name in args.servers:
            server = appliance_server if name == OURS else peer_server
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            with server(args, tmp) as target:
                figures += asyncio.run(bench(target, args))
    ratios = report(figures)
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        doc = {"config": config, "results": [asdict(f) for f in figures], "ratios": ratios}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
