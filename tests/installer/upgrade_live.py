"""`python -m tests.installer.upgrade_live PLAN.json`: a serving box's upgrades, run inside a loopback-only
network namespace by test_e2e_upgrade_live.py, which reads the JSON summary this writes to PLAN's `out`.

With the real CPU bundle: `install --start` from the admin's installer.pyz and the curl line it prints; an
upgrade to version 2 while 4 threads stream chat completions with the official `openai` client in a loop;
`status`; a key created after the upgrade, used before and after `rollback`; and a forced-bad upgrade (its
appliance exits at start), under the same load, that returns to the previous version by itself. Each step
records what it saw; the service is stopped at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx2
import openai

STREAMS = 4
MESSAGES: list[Any] = [{"role": "user", "content": "Count from one to five."}]
STEP_TIMEOUT_S = 1200


class Load:
    """STREAMS threads, each streaming chat completions one after another with its own official client."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.lock = threading.Lock()
        self.ok = 0
        self.empty = 0  # streams that ended well with no text (a model may stop at once): not failures
        self.attempts = 0  # HTTP requests sent: more than ok + failed means the client retried
        self.failed: list[str] = []
        self.slowest_s = 0.0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(STREAMS)]

    def _sent(self, _request: httpx2.Request) -> None:
        with self.lock:
            self.attempts += 1

    def _loop(self) -> None:
        # The client's defaults (retries and the 600 s read timeout) but no proxy from the environment.
        http = httpx2.Client(trust_env=False, event_hooks={"request": [self._sent]})
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, http_client=http)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                stream = client.chat.completions.create(
                    model="default", messages=MESSAGES, max_tokens=12, stream=True
                )
                text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
                outcome = None
            except openai.OpenAIError as error:
                outcome = f"{type(error).__name__}: {error}"
            with self.lock:
                if outcome is None:
                    self.ok += 1
                    self.empty += not text
                else:
                    self.failed.append(outcome)
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 300
        while self.ok < STREAMS and not self.failed:  # warm: every thread has streamed once
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.2)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=600)

    def summary(self) -> dict[str, Any]:
        """What the load saw."""
        return {
            "ok": self.ok,
            "empty": self.empty,
            "failed": self.failed[:10],
            "failed_count": len(self.failed),
            "retries": self.attempts - self.ok - len(self.failed),
            "slowest_s": round(self.slowest_s, 1),
        }


class Box:
    """The prefix under test and how to drive it."""

    def __init__(self, plan: dict[str, str]) -> None:
        self.plan = plan
        self.prefix = Path(plan["prefix"])
        self.url = f"http://127.0.0.1:{plan['port']}"

    def installer(self, *args: str, pyz: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The installer as an admin runs it: the installed installer.pyz unless another is given."""
        installed = self.prefix / "current" / "bundle" / "installer" / "installer.pyz"
        pyz = pyz or (installed if installed.is_file() else Path(self.plan["installer"]))
        return subprocess.run(
            [sys.executable, str(pyz), *args, "--prefix", str(self.prefix)],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )

    def service_line(self) -> str:
        """`status`'s service line."""
        status = self.installer("status").stdout
        return next((line for line in status.splitlines() if line.startswith("service: ")), status)

    def appliance(self, *args: str) -> str:
        """The current version's `appliance ARGS` on the prefix's data."""
        env = {"APPLIANCE_HOME": str(self.prefix / "data"), "PATH": os.environ["PATH"]}
        argv = [str(self.prefix / "current" / "venv" / "bin" / "appliance"), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.strip()

    def chat(self, key: str) -> str:
        """One chat completion (no retries: it must answer at once)."""
        http = httpx2.Client(trust_env=False)
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, http_client=http, max_retries=0)
        answer = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=8)
        return answer.choices[0].message.content or ""


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr[-2500:]


def run(box: Box, plan: dict[str, str], summary: dict[str, Any]) -> None:
    """The steps; each records into `summary` as it goes."""
    home = box.prefix / "data"
    home.mkdir(parents=True, mode=0o700)
    # The data directory before the first install: the install keeps it (installer/data.py). Two threads
    # and a short context on this small box; the port the plan chose.
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {plan["port"]}\n'
        "[workers]\nthreads = 2\ncontext_length = 1024\n"
    )
    started = time.monotonic()
    done = box.installer(
        *("install", plan["v1"], "--trust", plan["public"], "--python", sys.executable, "--start"),
        pyz=Path(plan["installer"]),
    )
    summary["install"] = {
        "rc": done.returncode,
        "seconds": round(time.monotonic() - started),
        "err": _tail(done),
    }
    assert done.returncode == 0, done.stderr
    curl = next(line for line in done.stdout.splitlines() if line.startswith("curl "))
    answered = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120, check=False)
    summary["install"]["curl"] = answered.stdout[-1000:]
    admin = (home / "admin.key").read_text().strip()
    summary["install"]["service"] = box.service_line()

    with Load(box.url, admin) as load:
        started = time.monotonic()
        done = box.installer("install", plan["v2"])
        upgraded = round(time.monotonic() - started)
        time.sleep(5)  # the load goes on against the new version
    summary["upgrade"] = {"rc": done.returncode, "seconds": upgraded, "err": _tail(done), **load.summary()}
    summary["upgrade"]["service"] = box.service_line()
    assert done.returncode == 0, done.stderr

    key = box.appliance("keys", "create", "--name", "after-upgrade", "--role", "user", "--quiet")
    summary["key"] = {"before_rollback": box.chat(key)}
    done = box.installer("rollback")
    summary["rollback"] = {"rc": done.returncode, "err": _tail(done), "service": box.service_line()}
    assert done.returncode == 0, done.stderr
    summary["key"]["after_rollback"] = box.chat(key)

    with Load(box.url, admin) as load:
        done = box.installer("install", plan["bad"])
        time.sleep(5)
    summary["bad"] = {"rc": done.returncode, "last": (done.stderr.splitlines() or [""])[-1], **load.summary()}
    summary["bad"] |= {"err": _tail(done), "service": box.service_line(), "chat": box.chat(key)}


def main() -> None:
    """Run the plan; write the summary (an `error` entry if a step failed); stop the service."""
    plan = json.loads(Path(sys.argv[1]).read_text())
    box, summary = Box(plan), dict[str, Any]()
    try:
        run(box, plan, summary)
    except BaseException:  # noqa: BLE001 - a failed step (an assert, a timeout) is what the summary reports
        summary["error"] = traceback.format_exc()[-4000:]
    finally:
        stopped = box.installer("stop")
        summary["stop"] = stopped.stdout.strip() or _tail(stopped)
        Path(plan["out"]).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
