"""`python -m tests.e2e.egress_lifecycle DIST KEY PREFIX`: the appliance's whole life, inside a test netns.

tests/e2e/test_no_egress.py runs this inside a network namespace whose default route leads to a honeypot
and captures every frame there; this module only drives the appliance and checks that each step worked:
an offline install of the real CPU bundle (built outside, in DIST, signed by KEY) into PREFIX, the installed
`appliance serve`, 200 mixed requests, a worker killed and restarted, key creation and revocation, the
egress report, shutdown. It prints one JSON summary line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.server import RunningAppliance, free_port

REQUESTS = 200
CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
CANNED = "The assistant is restarting; please retry shortly."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def install_offline(dist: Path, public_key: Path, prefix: Path) -> str:
    """The bundle's own installer.pyz installs the real CPU bundle, here, with the host's Python."""
    # Straight in this namespace (no extra `unshare -n`): its packets, if any, must meet the capture.
    bundle = next(dist.glob("appliance-cpu-*.bundle"))
    argv = [sys.executable, str(dist / "installer.pyz"), "install", str(bundle), "--prefix", str(prefix)]
    argv += ["--trust", str(public_key), "--python", sys.executable]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "egress.blocked" not in done.stderr, done.stderr
    return done.stdout.strip()  # "install: ok: appliance cpu version N"


def serve_installed(prefix: Path) -> RunningAppliance:
    """The installed `appliance` (its venv, the prefix's data directory) with two keys, on a free port."""
    home, port = prefix / "data", free_port()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[workers]\nthreads = 2\ncontext_length = 1024\n'
        # A route whose last link is a canned answer: while the worker is down, requests fail over to it.
        f'[routes.assistant]\nlinks = ["smollm2-135m"]\ncanned = "{CANNED}"\n'
    )
    appliance = str(prefix / "current" / "venv" / "bin" / "appliance")
    env = {"APPLIANCE_HOME": str(home), "PATH": os.environ["PATH"]}

    def key(role: str) -> str:
        argv = [appliance, "keys", "create", "--name", role, "--role", role, "--quiet"]
        done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    admin_key, user_key = key("admin"), key("user")
    with (home / "serve.log").open("ab") as log:
        # cwd: the home, not the repository, so `python -m` in the workers imports the installed code.
        process = subprocess.Popen([appliance, "serve"], env=env, cwd=home, stdout=log, stderr=log)
    running = RunningAppliance(home, port, admin_key, user_key, process)
    running.wait_ready()
    return running


def mixed_requests(appliance: RunningAppliance) -> Counter[str]:
    """200 requests through the real `openai` client and raw HTTP: chat, streams, embeddings, errors."""
    client = openai.OpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=appliance.base_url, timeout=60) as http:
        for i in range(REQUESTS):
            kind = ("chat", "stream", "embeddings", "unknown-model", "bad-body", "bad-key")[i % 6]
            if kind == "chat":
                reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3)
                assert reply.choices[0].message.content is not None
            elif kind == "stream":
                chunks = client.chat.completions.create(
                    model="default", messages=MESSAGES, max_tokens=3, stream=True
                )
                assert sum(1 for _ in chunks) >= 1
            elif kind == "embeddings":
                vectors = client.embeddings.create(model="default", input=["a cat", "a dog"])
                assert len(vectors.data) == 2
            elif kind == "unknown-model":
                try:
                    client.chat.completions.create(model="gpt-9", messages=MESSAGES)
                except openai.NotFoundError:
                    pass
                else:
                    raise AssertionError("an unknown model was served")
            elif kind == "bad-body":
                json_headers = appliance.headers() | {"Content-Type": "application/json"}
                answer = http.post("/v1/chat/completions", headers=json_headers, content=b"{not json")
                assert answer.status_code == 400, answer.text
            else:
                answer = http.post("/v1/chat/completions", headers=appliance.headers("sk-wrong"), json=CHAT)
                assert answer.status_code == 401, answer.text
            seen[kind] += 1
    return seen


def crash_and_restart(appliance: RunningAppliance) -> int:
    """kill -9 the worker: requests to the route fail over to its canned answer until the supervisor has
    restarted the worker; then chat again. The new worker's pid."""
    admin = appliance.headers(appliance.admin_key)
    before = httpx.get(f"{appliance.base_url}/admin/engines", headers=admin).json()["data"][0]
    os.kill(before["pid"], signal.SIGKILL)
    deadline, canned = time.monotonic() + 60, 0
    while True:
        during = httpx.post(
            f"{appliance.base_url}/v1/chat/completions",
            headers=appliance.headers(),
            json={**CHAT, "model": "assistant"},
            timeout=60,
        )
        assert during.status_code == 200, during.text
        canned += during.headers.get("x-canned-answer") == "true"
        after = httpx.get(f"{appliance.base_url}/admin/engines", headers=admin).json()["data"][0]
        if after["restarts"] > before["restarts"] and after["state"] == "ready":
            break
        assert time.monotonic() < deadline, f"worker not restarted: {after}"
        time.sleep(0.05)
    assert canned > 0, "no request was answered by the fallback while the worker was down"
    answer = httpx.post(
        f"{appliance.base_url}/v1/chat/completions", headers=appliance.headers(), json=CHAT, timeout=60
    )
    assert answer.status_code == 200, answer.text
    pid: int = after["pid"]
    return pid


def admin_actions(appliance: RunningAppliance) -> dict[str, object]:
    """Create a key, use it, revoke it, see it refused; then the gateway's own egress report."""
    admin = appliance.headers(appliance.admin_key)
    with httpx.Client(base_url=appliance.base_url, timeout=120) as http:
        created = http.post("/admin/keys", headers=admin, json={"name": "temp", "role": "user"}).json()
        assert http.post(
            "/v1/chat/completions", headers=appliance.headers(created["key"]), json=CHAT
        ).is_success
        assert http.delete(f"/admin/keys/{created['id']}", headers=admin).status_code == 200
        refused = http.post("/v1/chat/completions", headers=appliance.headers(created["key"]), json=CHAT)
        assert refused.status_code == 401
        report: dict[str, object] = http.get("/admin/egress", headers=admin).json()
        assert report["ok"] is True, report
        audit = http.get("/admin/audit", headers=admin).json()["data"]
    blocked = [e for e in audit if e["action"] == "egress.blocked"]
    assert len(blocked) >= 2, audit  # the gateway's own probe and the worker's
    return report


def main() -> None:
    """Run every step; a failed step is an AssertionError (exit 1) with its reason."""
    dist, public_key, prefix = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    installed = install_offline(dist, public_key, prefix)
    appliance = serve_installed(prefix)
    try:
        requests = mixed_requests(appliance)
        new_pid = crash_and_restart(appliance)
        report = admin_actions(appliance)
    finally:
        code = appliance.stop()
    assert "Traceback" not in appliance.log, appliance.log[-3000:]
    summary = {
        "installed": installed,
        "requests": dict(requests),
        "restarted_worker_pid": new_pid,
        "egress_ok": report["ok"],
        "exit_code": code,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
