"""Stands for `vllm serve` in the tmpfs loading tests (vLLM is not installed on CPU machines).

It does what matters about vLLM at that boundary: it takes `--model FOLDER` and reads every file of that
folder at start-up (vLLM loads the weights, config and tokenizer then, and never again), then serves
/health and /v1/models on `--uds` like vLLM's OpenAI server. It writes what it saw to `--report` (JSON) before
it answers ready. With `--fail` it exits with status 3 after reading, as a vLLM that cannot load would.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import socketserver
import stat
import sys
from pathlib import Path


class _UnixHttpServer(socketserver.UnixStreamServer):
    pass


def main() -> None:
    """Read the model folder, report it, then serve readiness until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--uds", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    files = {
        path.relative_to(args.model).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(args.model.rglob("*"))
        if path.is_file()
    }
    mode = stat.S_IMODE(args.model.stat().st_mode)
    report = {"folder": str(args.model), "mode": mode, "files": files, "pid": os.getpid()}
    args.report.write_text(json.dumps(report))
    if args.fail:
        sys.exit(3)
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
