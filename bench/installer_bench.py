"""Verify throughput and offline install time of the CPU bundle, with the share spent in pip.

    .venv/bin/python bench/installer_bench.py [--bundle dist/appliance-cpu-N.bundle --trust KEY.pub]

Without --bundle it builds one with a throw-away key (the first build gathers wheels; later ones reuse
.cache/bundle/). Verify is measured in process (sha256 of every member plus the signature) next to its
peer, `sha256sum` over the same file: the floor any verifier that reads every byte must pay.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from installer.bundlefile import read_bundle
from installer.crypto import CryptographyVerifier, Verifier, find_openssl, load_public_key
from installer.limits import Limits
from installer.pack import generate_key_pair
from installer.trust import TrustedKeys

REPO = Path(__file__).resolve().parent.parent


def build(work: Path) -> tuple[Path, Path]:
    """A fresh CPU bundle signed by a throw-away key."""
    private, public = generate_key_pair(work / "keys", "bench")
    argv = [sys.executable, "-m", "installer.build", "bundle", "--profile", "cpu", "--key", str(private)]
    subprocess.run([*argv, "--version", "1", "--out", str(work / "dist")], cwd=REPO, check=True)
    return work / "dist" / "appliance-cpu-1.bundle", public


def time_verify(bundle: Path, trust: TrustedKeys, verifier: Verifier, runs: int) -> list[float]:
    """Seconds per full verification."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read_bundle(
            bundle,
            trust,
            now=int(time.time()),
            installed_version=None,
            allow_downgrade=False,
            verifier=verifier,
            limits=Limits(),
        )
        times.append(time.perf_counter() - started)
    return times


def time_sha256sum(bundle: Path, runs: int) -> list[float]:
    """Seconds per `sha256sum` of the whole file."""
    tool = shutil.which("sha256sum") or "sha256sum"
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([tool, str(bundle)], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def time_install(bundle: Path, public: Path, prefix: Path) -> dict[str, float]:
    """Seconds per install step, from the installer's own `step:` lines, offline where possible."""
    argv = [sys.executable, "-m", "installer", "install", str(bundle), "--prefix", str(prefix)]
    argv += ["--trust", str(public), "--python", sys.executable]
    offline = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0
    started = time.perf_counter()
    process = subprocess.Popen(
        ["unshare", "-n", *argv] if offline else argv, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None  # Popen with stderr=PIPE always has it; narrows the type
    steps: dict[str, float] = {}
    step, since = "verify", started
    for line in process.stderr:
        if line.startswith("step: "):
            now = time.perf_counter()
            steps[step] = steps.get(step, 0.0) + now - since
            step, since = line.split(":", 1)[1].strip(), now
    if process.wait() != 0:
        raise SystemExit("install failed")
    steps[step] = steps.get(step, 0.0) + time.perf_counter() - since
    steps["total"] = time.perf_counter() - started
    return steps


def main() -> None:
    """Print verify MB/s beside sha256sum, then install time by step."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--trust", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="installer-bench-", dir=REPO / ".cache") as folder:
        work = Path(folder)
        bundle, public = (args.bundle, args.trust) if args.bundle else build(work)
        trust = TrustedKeys().with_keys([load_public_key(public.read_text())])
        mb = bundle.stat().st_size / 1e6
        print(f"bundle: {bundle.name}, {mb:.1f} MB")
        rows = [("sha256sum (peer, floor)", time_sha256sum(bundle, args.runs))]
        rows.append(("verify, cryptography", time_verify(bundle, trust, CryptographyVerifier(), args.runs)))
        openssl = find_openssl()
        if openssl is not None:
            rows.append(("verify, openssl", time_verify(bundle, trust, openssl, args.runs)))
        print(f"{'':26}{'median s':>10}{'MB/s':>10}")
        for name, times in rows:
            median = statistics.median(times)
            print(f"{name:26}{median:10.2f}{mb / median:10.0f}")
        steps = time_install(bundle, public, work / "prefix")
        total = steps.pop("total")
        print(f"\noffline install: {total:.1f} s total")
        for name, seconds in steps.items():
            print(f"  {name:12}{seconds:7.1f} s {seconds / total:6.0%}")
        print(f"  pip share: {steps.get('pip', 0.0) / total:.0%}")


if __name__ == "__main__":
    main()
