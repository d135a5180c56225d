"""Encrypted store: encrypt/decrypt throughput, and worker cold start from the plain file vs from the store.

Run: `.venv/bin/python -m bench.store_bench [MODEL.gguf ...] [--rounds N] [--results bench/RESULTS.md]`.

Cold start is what `appliance serve` pays: the real supervisor starts the real llama.cpp worker process
(`python -m appliance.engines.llamacpp`) and the clock stops when the worker answers /health. The store side
goes through the gateway's own model source (`sealed_model_source`: decrypt into a sealed memfd, then start).
Plain and store starts alternate within each round so that drift in machine load hits both alike, and each
is measured twice: with the page cache warm for both files (read once beforehand), and cold for both (each
file's cached pages dropped with posix_fadvise(DONTNEED) right before the start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance import supervisor as supervisor_module
from appliance.gguf_info import read_gguf_info
from appliance.hardware import detect_hardware
from appliance.registry.models import ModelInfo
from appliance.registry.registry import open_registry
from appliance.settings import Settings, load_settings
from appliance.store.format import encrypt_stream
from appliance.store.keys import new_data_key
from appliance.store.loading import ModelSource, plain_model, sealed_model_source
from appliance.store.store import ModelStore
from appliance.supervisor import Supervisor, WorkerState, serving_plan

MODELS_FOLDER = Path(__file__).resolve().parent.parent / ".cache" / "models"
DEFAULT_MODELS = (
    MODELS_FOLDER / "SmolLM2-135M-Instruct.Q4_1.gguf",
    MODELS_FOLDER / "gemma-3-270m-q4_k_m.gguf",
)
TARGET_RATIO = 1.25
SETTINGS_TOML = "[workers]\nthreads = 2\ncontext_length = 2048\nstartup_timeout_s = 120\n"
READY_POLL_S = 0.01
"""The supervisor polls readiness every 0.1 s; a finer poll here keeps that step out of the figures."""
CACHE_MODES = ("warm", "cold")


@dataclass
class Measured:
    """One model's figures: throughput and the start times of each side and cache mode."""

    name: str
    size_mb: float
    encrypt_mb_s: float
    decrypt_mb_s: float
    starts: dict[tuple[str, str], list[float]]
    """(side, cache mode) -> seconds of each round; side is "plain" or "store"."""

    def median(self, side: str, cache: str) -> float:
        """Median start time of one side in one cache mode."""
        return statistics.median(self.starts[(side, cache)])


def _drop_cache(path: Path) -> None:
    """Drop the file's clean pages from the page cache (no root needed; a no-op for pages still mapped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _warm_cache(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(8 * 1024 * 1024):
            pass


async def _cold_start(settings: Settings, model: ModelInfo, source: ModelSource) -> float:
    """Seconds from asking the supervisor to start `model`'s worker until the worker answers ready."""
    plan = serving_plan(settings, [model], detect_hardware(None))
    supervisor = Supervisor(settings, [model], plan, model_source=source)
    started = time.perf_counter()
    try:
        await supervisor.start()
        elapsed = time.perf_counter() - started
        worker = supervisor.workers[model.name]
        if worker.state is not WorkerState.READY:
            raise SystemExit(f"the worker of {model.name} did not become ready ({worker.last_exit})")
        return elapsed
    finally:
        await supervisor.stop()


def _throughput(path: Path, store: ModelStore, model: ModelInfo) -> tuple[float, float]:
    """Encrypt MB/s (to /dev/null) and decrypt MB/s (into a sealed memfd), best of three."""
    size_mb = path.stat().st_size / 1e6
    encrypts, decrypts = [], []
    for _ in range(3):
        with path.open("rb") as source, open(os.devnull, "wb") as sink:
            start = time.perf_counter()
            encrypt_stream(source, sink, new_data_key(), "bench")
            encrypts.append(time.perf_counter() - start)
        start = time.perf_counter()
        fd = store.decrypt_to_memfd(model)
        decrypts.append(time.perf_counter() - start)
        os.close(fd)
    return size_mb / min(encrypts), size_mb / min(decrypts)


def measure(path: Path, rounds: int, say: Callable[[str], None]) -> Measured:
    """Import `path` into a fresh store, then time plain and store cold starts, interleaved."""
    with tempfile.TemporaryDirectory(prefix="store-bench-") as home_name:
        home = Path(home_name)
        (home / "settings.toml").write_text(SETTINGS_TOML)
        settings = load_settings(home)
        registry = open_registry(settings.database_path)
        store = ModelStore(home, registry)
        plain = registry.models.add(path, read_gguf_info(path), name="plain")
        stored = store.import_gguf(path, name="stored")
        encrypt_mb_s, decrypt_mb_s = _throughput(path, store, stored)
        sides: dict[str, tuple[ModelInfo, ModelSource]] = {
            "plain": (plain, plain_model),
            "store": (stored, sealed_model_source(store)),
        }
        starts: dict[tuple[str, str], list[float]] = {(s, c): [] for s in sides for c in CACHE_MODES}
        asyncio.run(_cold_start(settings, plain, plain_model))  # one unmeasured start: imports compiled
        for index in range(rounds):
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            for cache in CACHE_MODES:
                for side in order:
                    model, source = sides[side]
                    if cache == "warm":
                        _warm_cache(model.path)
                    else:
                        _drop_cache(model.path)
                    seconds = asyncio.run(_cold_start(settings, model, source))
                    starts[(side, cache)].append(seconds)
                    say(f"  {path.name} round {index + 1} {cache:4} {side:5} {seconds:6.3f} s")
    return Measured(path.name, path.stat().st_size / 1e6, encrypt_mb_s, decrypt_mb_s, starts)


def table(results: Sequence[Measured]) -> list[str]:
    """The side-by-side markdown table of every model and cache mode."""
    lines = [
        "| model | MB | encrypt MB/s | decrypt MB/s | page cache | plain start s | store start s | ratio |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        for cache in CACHE_MODES:
            plain, stored = result.median("plain", cache), result.median("store", cache)
            lines.append(
                f"| {result.name} | {result.size_mb:.1f} | {result.encrypt_mb_s:.0f} | "
                f"{result.decrypt_mb_s:.0f} | {cache} (both) | {plain:.3f} | {stored:.3f} | "
                f"{stored / plain:.2f}x |"
            )
    return lines


def verdicts(results: Sequence[Measured]) -> list[str]:
    """PASS/FAIL against the issue's target, per model and cache mode."""
    lines = []
    for result in results:
        for cache in CACHE_MODES:
            ratio = result.median("store", cache) / result.median("plain", cache)
            verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
            lines.append(
                f"- {verdict}: {result.name}, cache {cache}: store start <= {TARGET_RATIO}x plain "
                f"(got {ratio:.2f}x)"
            )
    return lines


def machine() -> str:
    """The platform, the CPU model and how many cores this process may use."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{platform.platform()}; {cpu}; {len(os.sched_getaffinity(0))} cores usable"


def main() -> None:
    """Measure every model, print the table, and append it to the results file when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, default=list(DEFAULT_MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, help="append a section to this markdown file")
    parser.add_argument("--note", default="", help="a line about the conditions (e.g. other load)")
    args = parser.parse_args()
    supervisor_module.HEALTH_POLL_S = READY_POLL_S  # bench only: finer readiness steps
    load_before = os.getloadavg()[0]
    results = [measure(path, args.rounds, lambda line: print(line, file=sys.stderr)) for path in args.models]
    load_after = os.getloadavg()[0]
    lines = [
        "## Issue 5: worker cold start from the encrypted store (bench/store_bench.py)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average {load_before:.2f} before, {load_after:.2f} after",
        f"- command: `{shlex.join(['.venv/bin/python', '-m', 'bench.store_bench', *sys.argv[1:]])}`",
        f"- median of {args.rounds} interleaved rounds; start = supervisor.start() until the llama.cpp "
        "worker answers /health; store = decrypt into a sealed memfd + the same start",
        *([f"- conditions: {args.note}"] if args.note else []),
        "",
        *table(results),
        "",
        *verdicts(results),
    ]
    print("\n".join(lines))
    if args.results is not None:
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
