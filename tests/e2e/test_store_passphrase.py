"""Passphrase mode end to end: a real appliance starts locked, unlocks, locks, serves a re-encrypted model."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.reference import greedy_completion
from tests.e2e.server import APPLIANCE, READY_TIMEOUT_S, RunningAppliance, free_port

CONTEXT_LENGTH = 2048
MAX_TOKENS = 32
PROMPT = "The three primary colours are"
PASSPHRASE = "correct horse battery staple"
WRONG = "incorrect-mule-9c41"  # distinctive, so the test can prove it was never logged


def _run(home: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """The `appliance` command against `home`, with extra environment variables."""
    env = os.environ | {"APPLIANCE_HOME": str(home)} | environment
    return subprocess.run([APPLIANCE, *args], env=env, capture_output=True, text=True, check=False)


def _ok(home: Path, *args: str, **environment: str) -> str:
    done = _run(home, *args, **environment)
    assert done.returncode == 0, f"appliance {' '.join(args)} failed: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """`appliance serve` of an encrypted SmolLM2 whose store key comes from a passphrase (so: locked)."""
    home = tmp_path_factory.mktemp("passphrase") / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[workers]\nthreads = 2\ncontext_length = {CONTEXT_LENGTH}\n[store]\nrequire_encrypted = true\n"
    )
    _ok(home, "models", "import", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    _ok(home, "store", "rotate-key", "--passphrase", APPLIANCE_STORE_NEW_PASSPHRASE=PASSPHRASE)
    assert not (home / "store.key").exists()
    admin_key = _ok(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user_key = _ok(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [APPLIANCE, "serve"], env=os.environ | {"APPLIANCE_HOME": str(home)}, stdout=log, stderr=log
        )
    running = RunningAppliance(home, port, admin_key, user_key, process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:  # a locked appliance is alive but never ready: wait for liveness only
        assert process.poll() is None, running.log
        try:
            if httpx.get(f"{running.base_url}/health/live", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "appliance serve did not come up"
        time.sleep(0.2)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log
    assert WRONG not in running.log
    assert PASSPHRASE not in running.log


@pytest.fixture(scope="module")
def reference_text(model_path: Path) -> str:
    """llama-cpp-python's own greedy completion of PROMPT from the plain file."""
    return greedy_completion(model_path, PROMPT, MAX_TOKENS)


def _client(running: RunningAppliance) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=running.user_key, max_retries=0)


def _complete(running: RunningAppliance) -> str:
    done = _client(running).completions.create(
        model="default", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    return done.choices[0].text


def _admin(running: RunningAppliance) -> httpx.Client:
    return httpx.Client(base_url=running.base_url, headers=running.headers(running.admin_key), timeout=180)


def _assert_locked(running: RunningAppliance) -> None:
    """Ready says locked, model requests get 503 store_locked with Retry-After, no worker runs."""
    ready = httpx.get(f"{running.base_url}/health/ready", headers=running.headers(), timeout=10)
    assert ready.status_code == 503
    assert ready.json()["status"] == "locked"
    with pytest.raises(openai.APIStatusError) as refused:
        _client(running).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert refused.value.status_code == 503
    assert refused.value.code == "store_locked"
    assert refused.value.response.headers["Retry-After"]
    with _admin(running) as admin:
        assert admin.get("/admin/store/status").json()["locked"] is True
        [engine] = admin.get("/admin/engines").json()["data"]
        assert engine["pid"] is None
    assert not running.worker_socket().exists()


def test_passphrase_store_starts_locked(locked: RunningAppliance) -> None:
    """Serving starts: liveness 200, readiness 503 `locked`, every model request 503 `store_locked`."""
    _assert_locked(locked)
    with _admin(locked) as admin:
        status = admin.get("/admin/store/status").json()
        assert (status["locked"], status["mode"], status["encrypted_models"]) == (
            True,
            "passphrase",
            ["smollm2-135m"],
        )
        user = httpx.post(
            f"{locked.base_url}/admin/store/unlock",
            json={"passphrase": PASSPHRASE},
            headers=locked.headers(),
            timeout=10,
        )
        assert user.status_code == 403
    assert "store locked (key from a passphrase" in _ok(
        locked.home, "store", "status", APPLIANCE_ADMIN_KEY=locked.admin_key
    )


def test_wrong_passphrase_is_refused_then_the_right_one_unlocks_and_lock_relocks(
    locked: RunningAppliance, reference_text: str
) -> None:
    """CLI unlock with a wrong passphrase: exit 1, audited; the right one serves the plain file's tokens."""
    failed = _run(
        locked.home, "store", "unlock", APPLIANCE_ADMIN_KEY=locked.admin_key, APPLIANCE_STORE_PASSPHRASE=WRONG
    )
    assert failed.returncode == 1
    assert (
        failed.stderr.strip().splitlines()[-1] == "error: the gateway refused (400): wrong store passphrase"
    )
    with _admin(locked) as admin:
        wrong = admin.post("/admin/store/unlock", json={"passphrase": ""})
        assert wrong.status_code == 400
        assert wrong.json()["error"]["code"] == "wrong_store_passphrase"
        assert wrong.json()["error"]["param"] == "passphrase"
    _assert_locked(locked)

    key_file = locked.home / "admin.key"
    key_file.write_text(locked.admin_key + "\n")
    unlocked = _ok(
        locked.home, "store", "unlock", "--key-file", str(key_file), APPLIANCE_STORE_PASSPHRASE=PASSPHRASE
    )
    assert unlocked.strip() == "unlocked; started 1 encrypted worker(s)"
    locked.wait_ready()
    assert _complete(locked) == reference_text
    chat = _client(locked).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content

    with _admin(locked) as admin:
        assert admin.post("/admin/store/lock").json()["stopped"] == 1
        events = [(e["action"], e["outcome"], e["detail"]) for e in admin.get("/admin/audit").json()["data"]]
    _assert_locked(locked)
    assert ("store.unlock", "failure", "wrong store passphrase") in events
    assert ("store.unlock", "success", "") in events
    assert ("store.lock", "success", "") in events
    assert not any(WRONG in str(event) or PASSPHRASE in str(event) for event in events)


def test_reencrypt_changes_the_file_and_the_model_serves_the_same_tokens(
    locked: RunningAppliance, reference_text: str
) -> None:
    """`appliance models reencrypt`: new bytes under a new key, old file gone; unlocked, the same tokens."""
    folder = locked.home / "store"
    [before] = list(folder.glob("*.aplm"))
    old_bytes = before.read_bytes()
    done = _ok(locked.home, "models", "reencrypt", "default", APPLIANCE_STORE_PASSPHRASE=PASSPHRASE)
    assert "re-encrypted smollm2-135m under a new data key" in done
    [after] = list(folder.glob("*.aplm"))
    assert after != before
    assert not before.exists()
    new_bytes = after.read_bytes()
    assert new_bytes != old_bytes
    assert abs(len(new_bytes) - len(old_bytes)) < 64
    assert _ok(
        locked.home, "models", "verify", "smollm2-135m", APPLIANCE_STORE_PASSPHRASE=PASSPHRASE
    ).strip() == ("smollm2-135m: ok")
    missing = _run(locked.home, "models", "reencrypt", "nope", APPLIANCE_STORE_PASSPHRASE=PASSPHRASE)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "error: The model `nope` does not exist."

    with _admin(locked) as admin:
        assert admin.post("/admin/store/unlock", json={"passphrase": PASSPHRASE}).json()["started"] == 1
    locked.wait_ready()
    assert _complete(locked) == reference_text
    assert new_bytes[:4] != b"GGUF"
