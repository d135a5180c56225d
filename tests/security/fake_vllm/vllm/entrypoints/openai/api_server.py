"""Stands for vLLM's OpenAI server at the boundary the supervisor crosses: `python -m` this module.

It takes vLLM's argv (only `--uds` and `--served-model-name` matter), records what a process of the real
server would live with, then serves /health and /v1/models on the unix socket like vLLM. The record goes to
the JSON file named by FAKE_VLLM_REPORT: its network namespace and interfaces, whether TCP over 127.0.0.1
works (torch.distributed and NCCL's bootstrap need it), its own dumpable flag, that of a new interpreter it
starts (as vLLM spawns its engine core and GPU workers), and the loopback variables of its environment.
"""

from __future__ import annotations

import argparse
import ctypes
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
from pathlib import Path

PR_GET_DUMPABLE = 3
CHILD_DUMPABLE = "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"


class _UnixHttpServer(socketserver.UnixStreamServer):
    pass


def _loopback_tcp_works() -> bool:
    try:
        server = socket.create_server(("127.0.0.1", 0))
        with server, socket.create_connection(server.getsockname()[:2], timeout=5):
            return True
    except OSError:
        return False


def _record(report: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD_DUMPABLE], capture_output=True, text=True, check=True, timeout=60
    )
    record = {
        "pid": os.getpid(),
        "network_namespace": os.readlink("/proc/self/ns/net"),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "loopback_tcp": _loopback_tcp_works(),
        "dumpable": ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "child_dumpable": int(child.stdout),
        "environment": {
            name: os.environ.get(name)
            for name in ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
        },
    }
    report.write_text(json.dumps(record))


def main() -> None:
    """Record the process's containment, then serve readiness until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--uds", required=True)
    parser.add_argument("--served-model-name", required=True)
    args, _ = parser.parse_known_args()
    _record(Path(os.environ["FAKE_VLLM_REPORT"]))
    name = args.served_model_name

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"{}" if self.path == "/health" else json.dumps({"data": [{"id": name}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "worker"  # a unix socket peer has no host address

        def log_message(self, format: str, *args: object) -> None:
            return

    with _UnixHttpServer(args.uds, Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
