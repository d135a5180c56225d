"""An encrypted model served by a real appliance: same greedy tokens, no plaintext on disk, key rotation."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.reference import greedy_completion
from tests.e2e.server import APPLIANCE, RunningAppliance, cli, free_port, serve

CONTEXT_LENGTH = 2048  # what the appliance's workers are configured with below
MAX_TOKENS = 32
PROMPT = "The three primary colours are"
CANARY_LENGTH = 64


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temp folder that the appliance's processes use (TMPDIR), so the test can search all of it."""
    folder = tmp_path_factory.mktemp("appliance-tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def encrypted(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path, private_tmp: Path
) -> Iterator[RunningAppliance]:
    """`appliance serve` with only the encrypted store's copy of SmolLM2, and require_encrypted on."""
    home = tmp_path_factory.mktemp("encrypted") / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[workers]\nthreads = 2\ncontext_length = {CONTEXT_LENGTH}\n"
        "[store]\nrequire_encrypted = true\n"
    )
    cli(home, "models", "import", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    admin_key = cli(home, "keys", "create", "--name", "admin", "--role", "admin", "--quiet").strip()
    user_key = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    running = serve(home, port, admin_key, user_key)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


@pytest.fixture(scope="module")
def reference_text(model_path: Path) -> str:
    """llama-cpp-python's own greedy completion of PROMPT from the plain file."""
    return greedy_completion(model_path, PROMPT, MAX_TOKENS)


def _complete(running: RunningAppliance) -> str:
    client = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=running.user_key, max_retries=0)
    done = client.completions.create(model="default", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    return done.choices[0].text


def test_encrypted_model_gives_the_plain_files_greedy_tokens(
    encrypted: RunningAppliance, reference_text: str
) -> None:
    """Served from the memfd, the model answers token for token like the plain file."""
    assert _complete(encrypted) == reference_text


def test_worker_loads_from_a_memfd(encrypted: RunningAppliance) -> None:
    """The worker's model path is /proc/self/fd/N and that descriptor is a memfd, not a file on disk."""
    engines = httpx.get(
        f"{encrypted.base_url}/admin/engines", headers=encrypted.headers(encrypted.admin_key), timeout=10
    ).json()
    [engine] = engines["data"]
    pid = engine["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    model_arg = argv[argv.index(b"--model") + 1].decode()
    assert model_arg.startswith("/proc/self/fd/")
    target = os.readlink(f"/proc/{pid}/fd/{model_arg.rsplit('/', 1)[1]}")
    assert target.startswith("/memfd:model-smollm2-135m")


def _files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def test_no_plaintext_on_disk(encrypted: RunningAppliance, private_tmp: Path, model_path: Path) -> None:
    """After import and a served request, no file in the home or temp folder holds model plaintext."""
    _complete(encrypted)
    plain = model_path.read_bytes()
    canaries = [plain[:CANARY_LENGTH], plain[len(plain) // 2 : len(plain) // 2 + CANARY_LENGTH]]
    canaries.append(plain[-CANARY_LENGTH:])
    searched = 0
    for path in _files_under(encrypted.home, private_tmp):
        data = path.read_bytes()
        searched += 1
        assert not data.startswith(b"GGUF"), path
        for canary in canaries:
            assert canary not in data, path
    assert searched >= 3  # the database, the settings, the encrypted file at least


def test_rotation_keeps_models_loading_and_the_old_key_opens_nothing(
    tmp_path: Path, model_path: Path, reference_text: str
) -> None:
    """Rotate the key of a stopped appliance: it serves again; the old key file opens nothing."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[workers]\nthreads = 2\ncontext_length = {CONTEXT_LENGTH}\n"
    )
    cli(home, "models", "import", str(model_path), "--name", "smollm2-135m", "--alias", "default")
    user_key = cli(home, "keys", "create", "--name", "user", "--role", "user", "--quiet").strip()
    old_key = (home / "store.key").read_bytes()
    assert "re-encrypted 1 model(s)" in cli(home, "store", "rotate-key")
    assert (home / "store.key").read_bytes() != old_key
    running = serve(home, port, user_key, user_key)
    try:
        assert _complete(running) == reference_text
    finally:
        running.stop()
    (home / "store.key").write_bytes(old_key)
    failed = subprocess.run(
        [APPLIANCE, "models", "verify", "smollm2-135m"],
        env=os.environ | {"APPLIANCE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: {home / 'store.key'} is not the key of this store (wrong key file)"
    )


def test_require_encrypted_refuses_a_plain_model(tmp_path: Path, model_path: Path) -> None:
    """With [store] require_encrypted, `appliance serve` of a plain model exits 1 with one clear line."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n[store]\nrequire_encrypted = true\n'
    )
    cli(home, "models", "add", str(model_path), "--name", "plain")
    done = subprocess.run(
        [APPLIANCE, "serve"],
        env=os.environ | {"APPLIANCE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: [store] require_encrypted is on and model 'plain' is not encrypted "
        "(import it with `appliance models import`)"
    )


def test_admin_store_routes(encrypted: RunningAppliance, model_path: Path, tmp_path: Path) -> None:
    """List, verify, export and remove through the admin API; user keys get 403; everything is audited."""
    admin = httpx.Client(
        base_url=encrypted.base_url, headers=encrypted.headers(encrypted.admin_key), timeout=60
    )
    user = httpx.Client(base_url=encrypted.base_url, headers=encrypted.headers(), timeout=60)
    with admin, user:
        assert user.get("/admin/store/models").status_code == 403
        listed = admin.get("/admin/store/models").json()["data"]
        assert [(m["name"], m["encrypted"]) for m in listed] == [("smollm2-135m", True)]
        assert listed[0]["size_bytes"] == model_path.stat().st_size
        verified = admin.post("/admin/store/models/default/verify")
        assert verified.status_code == 200
        assert verified.json()["verified"] is True
        target = tmp_path / "exported.gguf"
        assert (
            admin.post("/admin/store/models/smollm2-135m/export", json={"to": str(target)}).status_code == 200
        )
        assert target.read_bytes() == model_path.read_bytes()
        again = admin.post("/admin/store/models/smollm2-135m/export", json={"to": str(target)})
        assert again.status_code == 409
        relative = admin.post("/admin/store/models/smollm2-135m/export", json={"to": "x.gguf"})
        assert relative.json()["error"]["param"] == "to"
        assert admin.post("/admin/store/models/nope/verify").status_code == 404

        folder = encrypted.home / "store"
        files_before = set(folder.iterdir())
        cli(encrypted.home, "models", "import", str(model_path), "--name", "second")
        [stored] = set(folder.iterdir()) - files_before
        data = bytearray(stored.read_bytes())
        data[len(data) // 3] ^= 0x04
        stored.write_bytes(bytes(data))
        tampered = admin.post("/admin/store/models/second/verify")
        assert tampered.status_code == 422
        assert tampered.json()["error"]["code"] == "store_integrity_error"
        assert admin.delete("/admin/store/models/second").status_code == 200
        assert set(folder.iterdir()) == files_before
        actions = {(e["action"], e["target"], e["outcome"]) for e in admin.get("/admin/audit").json()["data"]}
        assert ("models.export", "smollm2-135m", "success") in actions
        assert ("models.remove", "second", "success") in actions
        assert ("models.verify", "second", "failure") in actions
        assert ("models.verify", "nope", "failure") in actions


def test_admin_reencrypt_route(encrypted: RunningAppliance, reference_text: str) -> None:
    """Re-encrypt through the admin API: a new file under a new data key, the old one gone, audited."""
    admin = httpx.Client(
        base_url=encrypted.base_url, headers=encrypted.headers(encrypted.admin_key), timeout=60
    )
    user = httpx.Client(base_url=encrypted.base_url, headers=encrypted.headers(), timeout=60)
    folder = encrypted.home / "store"
    with admin, user:
        [before] = folder.glob("*.aplm")
        old_bytes = before.read_bytes()
        assert user.post("/admin/store/models/default/reencrypt").status_code == 403
        assert list(folder.glob("*.aplm")) == [before]
        done = admin.post("/admin/store/models/default/reencrypt")
        assert done.status_code == 200, done.text
        assert done.json()["name"] == "smollm2-135m"
        assert done.json()["reencrypted"] is True
        [after] = folder.glob("*.aplm")
        assert after != before
        # A new data key: not one 64-byte run of the old ciphertext (past the header) survives.
        new_bytes = after.read_bytes()
        assert old_bytes[4096 : 4096 + 64] not in new_bytes
        assert admin.post("/admin/store/models/default/verify").json()["verified"] is True
        missing = admin.post("/admin/store/models/nope/reencrypt")
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "name"
        actions = [(e["action"], e["target"], e["outcome"]) for e in admin.get("/admin/audit").json()["data"]]
        assert ("models.reencrypt", "default", "success") in actions
        assert ("models.reencrypt", "nope", "failure") in actions
        assert ("models.reencrypt", "default", "failure") not in actions
    # The running worker keeps serving from the memfd it was given before the re-encryption.
    assert _complete(encrypted) == reference_text
