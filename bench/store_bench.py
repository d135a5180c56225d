"""Encrypted store: encrypt/decrypt throughput, and model load from the plain file vs from a sealed memfd.

Run: `.venv/bin/python -m bench.store_bench [MODEL.gguf] [--rounds N]`. Loads run in a fresh process each
(a cold worker start as far as llama.cpp is concerned; the page cache stays warm for both sides alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.registry.registry import open_registry
from appliance.store.format import encrypt_stream
from appliance.store.keys import new_data_key
from appliance.store.store import ModelStore

DEFAULT_MODEL = (
    Path(__file__).resolve().parent.parent / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
LOAD = """
import sys, time, llama_cpp
start = time.perf_counter()
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params())
assert model
print(time.perf_counter() - start)
"""


def _load_seconds(path: str, fds: tuple[int, ...] = ()) -> float:
    """Seconds llama.cpp takes to load `path` in a new process."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD, path], pass_fds=fds, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print encrypt and decrypt MB/s, then plain and memfd load times side by side."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size_mb = args.model.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as home_name:
        home = Path(home_name)
        store = ModelStore(home, open_registry(home / "registry.db"))
        start = time.perf_counter()
        model = store.import_gguf(args.model, name="bench")
        import_s = time.perf_counter() - start
        with args.model.open("rb") as source, open(os.devnull, "wb") as sink:
            start = time.perf_counter()
            encrypt_stream(source, sink, new_data_key(), "bench")
            encrypt_s = time.perf_counter() - start
        plain_loads, memfd_loads, decrypt_times = [], [], []
        for _ in range(args.rounds):
            plain_loads.append(_load_seconds(str(args.model)))
            start = time.perf_counter()
            fd = store.decrypt_to_memfd(model)
            decrypt_times.append(time.perf_counter() - start)
            try:
                memfd_loads.append(decrypt_times[-1] + _load_seconds(f"/proc/self/fd/{fd}", (fd,)))
            finally:
                os.close(fd)
    decrypt_s = statistics.median(decrypt_times)
    plain, sealed = statistics.median(plain_loads), statistics.median(memfd_loads)
    print(f"model: {args.model.name} ({size_mb:.1f} MB), median of {args.rounds} rounds")
    print(
        f"encrypt: {size_mb / encrypt_s:7.1f} MB/s   decrypt: {size_mb / decrypt_s:7.1f} MB/s (into a memfd)"
    )
    print(f"import (parse + SHA-256 + encrypt + fsync): {size_mb / import_s:7.1f} MB/s")
    print(f"{'load':28}  {'plain file':>10}  {'store -> memfd':>14}  ratio")
    print(f"{'llama_model_load_from_file':28}  {plain:9.3f}s  {sealed:13.3f}s  {sealed / plain:5.2f}x")


if __name__ == "__main__":
    main()
