"""Entry point of a llama.cpp worker process: `python -m appliance.engines.llamacpp --model … --socket …`."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import get_args

import msgspec
import uvicorn

from appliance.egress import EGRESS_SELF_TEST_FLAG, GUARDED_LOOP, install_worker_guard, worker_self_test
from appliance.engines.llamacpp.memlock import memory_lock_problem, unlocked_warning
from appliance.engines.llamacpp.model import LoadedModel, WorkerConfig
from appliance.engines.llamacpp.routes import create_worker_app
from appliance.errors import ApplianceError
from appliance.settings import ComputePriority, SchemaLimits
from appliance.store.handoff import receive_handed_model
from appliance.store.keys import make_non_dumpable

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker when its supervisor dies, so no worker is ever orphaned.

    SIGKILL, not SIGTERM: with the gateway gone nobody can use a graceful shutdown, and nothing a worker
    holds needs flushing; its stale socket is removed by the next supervisor before it starts a worker.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before the request took effect
        sys.exit(1)


def _schema_limits(text: str) -> SchemaLimits:
    try:
        return msgspec.json.decode(text, type=SchemaLimits)
    except msgspec.MsgspecError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _parse(argv: list[str] | None) -> tuple[WorkerConfig, Path]:
    parser = argparse.ArgumentParser(prog="python -m appliance.engines.llamacpp")
    parser.add_argument("--model", type=Path, required=True, help="GGUF file to load")
    parser.add_argument("--name", required=True, help="model name reported in responses")
    parser.add_argument("--socket", type=Path, required=True, help="unix socket to serve on")
    parser.add_argument("--context-length", type=int, required=True, help="per request; 0 = trained")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=0, help="slots; 0 = eight per thread, at most 16")
    parser.add_argument(
        "--kv-pool-tokens", type=int, default=0, help="KV cells the slots share; 0 = every slot's context"
    )
    parser.add_argument("--queue-depth", type=int, default=64, help="requests that may wait for a slot")
    parser.add_argument(
        "--stream-interval", type=int, default=0, help="steps whose text goes out together; 0 = by load"
    )
    parser.add_argument(
        "--compute-priority",
        choices=get_args(ComputePriority),
        default="normal",
        help="idle: compute threads under SCHED_IDLE, giving way to request handling",
    )
    parser.add_argument("--chat-template-file", type=Path, help="template to use instead of the GGUF's")
    parser.add_argument(
        "--schema-limits",
        type=_schema_limits,
        default=SchemaLimits(),
        help="[limits.schema] as JSON: bounds on the JSON Schemas requests turn into grammars",
    )
    args = parser.parse_args(argv)
    template = args.chat_template_file.read_text(encoding="utf-8") if args.chat_template_file else None
    config = WorkerConfig(
        args.model,
        args.name,
        args.context_length,
        args.threads,
        template,
        parallel=args.parallel,
        queue_depth=args.queue_depth,
        stream_interval=args.stream_interval,
        compute_priority=args.compute_priority,
        kv_pool_tokens=args.kv_pool_tokens,
        schema_limits=args.schema_limits,
    )
    return config, args.socket


class WorkerServer(uvicorn.Server):
    """uvicorn, but SIGTERM first ends running generations, so shutdown never waits on a long answer."""

    def __init__(self, config: uvicorn.Config, model: LoadedModel) -> None:
        super().__init__(config)
        self._model = model

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: stop generation, then let uvicorn shut down as usual."""
        self._model.core.begin_shutdown()
        super().handle_exit(sig, frame)


def _already_exiting(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM or SIGINT once uvicorn has stopped watching: the worker is already on its way out.

    uvicorn re-raises the signal that stopped it with the handler it found; with this one, the re-raise
    (and any late duplicate) lets the cleanup below finish instead of killing the process half-way.
    """


def _take_model(config: WorkerConfig) -> WorkerConfig:
    """The config with the model received from the supervisor if it hands one over (store/handoff.py),
    locked in memory where the limits allow; a plain file as it is."""
    if not receive_handed_model(config.model_path):
        return config
    size = os.stat(config.model_path).st_size
    problem = memory_lock_problem(size)
    if problem:
        print(unlocked_warning(config.name, size, problem), file=sys.stderr, flush=True)
    return dataclasses.replace(config, lock_in_memory=not problem)


def main(argv: list[str] | None = None) -> None:
    """Load the model, then serve it on the unix socket until SIGTERM."""
    # First of all: no core dumps, no ptrace or /proc/PID/mem by other processes of this user. Whatever
    # the worker is given from here on (decrypted weights, prompts) cannot leave it that way.
    make_non_dumpable()
    _die_with_parent()
    install_worker_guard(f"llamacpp-worker[{os.getpid()}]")  # before the model or uvicorn can open anything
    if (sys.argv[1:] if argv is None else argv) == [EGRESS_SELF_TEST_FLAG]:  # `appliance doctor` asks
        sys.exit(worker_self_test())
    config, socket_path = _parse(argv)
    try:
        config = _take_model(config)
        model = LoadedModel(config)
    except ApplianceError as error:  # a damaged or unreadable file: one line for the log, not a traceback
        print(f"llamacpp-worker: cannot serve {config.name}: {error.message}", file=sys.stderr)
        sys.exit(1)
    socket_path.unlink(missing_ok=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _already_exiting)
    server = WorkerServer(
        uvicorn.Config(
            create_worker_app(model),
            uds=str(socket_path),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            loop=GUARDED_LOOP,
        ),
        model,
    )
    try:
        server.run()
    finally:
        socket_path.unlink(missing_ok=True)
        model.close()


if __name__ == "__main__":
    main()
