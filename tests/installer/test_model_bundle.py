"""Signed model bundles: `build bundle --profile models` writes one, `appliance models import-bundle` verifies
it with the installer's verifier and encrypts its models into the store; a bundle that does not verify, or
is signed by a key not trusted here, writes nothing; `[store] require_signed` leaves bundles the only way."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.registry.registry import Registry, open_registry
from installer.build import main as build_main
from tests.api.console import run_appliance
from tests.api.test_console_gpu import gateway_app
from tests.awq_folders import write_awq_folder
from tests.gguf_files import write_tiny_gguf

Keys = dict[str, tuple[Path, Path]]


def build_model_bundle(out: Path, key: Path, *model_args: str, version: int = 1) -> Path:
    """`python -m installer.build bundle --profile models ...` in process; the bundle it wrote."""
    options = ["--key", str(key), "--version", str(version), "--out", str(out)]
    build_main(["bundle", "--profile", "models", *model_args, *options])
    return out / f"appliance-models-{version}.bundle"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A valid GGUF of a few hundred bytes."""
    return write_tiny_gguf(tmp_path / "Tiny.gguf")


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys, tiny: Path) -> Path:
    """A model bundle of the tiny GGUF, as `tiny` with alias `small`, signed by key `a`."""
    return build_model_bundle(tmp_path / "dist", keys["a"][0], "--model", str(tiny), "--alias", "small")


def _registry(home: Path) -> Registry:
    return open_registry(home / "registry.db")


def _store_entries(home: Path) -> list[str]:
    store = home / "store"
    return sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) if store.is_dir() else []


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _assert_nothing_written(home: Path) -> None:
    """No store file, no model, no key record, and no unpacked copy left in the home."""
    assert _store_entries(home) == []
    registry = _registry(home)
    assert registry.models.list() == []
    assert registry.store_keys.all() == []
    assert not [p for p in home.iterdir() if p.name.startswith(".bundle-import-")]


def test_a_model_bundle_holds_weights_and_registry_facts_only(bundle: Path, tiny: Path) -> None:
    """Profile `models`, no wheels and no installer: the weights and a registry.json naming them."""
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        meta = json.loads(archive.extractfile("models/tiny/registry.json").read())  # type: ignore[union-attr]
    assert names == ["manifest.json", "manifest.sig", "models/tiny/Tiny.gguf", "models/tiny/registry.json"]
    assert manifest["profile"] == "models"
    assert manifest["requirements"] == []
    assert {m["role"] for m in manifest["members"]} == {"model"}
    assert meta == {"name": "tiny", "aliases": ["small"], "format": "gguf", "file": "Tiny.gguf"}


def test_import_bundle_encrypts_the_model_into_the_store(
    appliance_home: Path, bundle: Path, keys: Keys, tiny: Path
) -> None:
    """The model is registered under the bundle's name and alias, its file is in the store and encrypted."""
    result = run_appliance("models", "import-bundle", str(bundle), "--trust", str(keys["a"][1]))
    assert result.returncode == 0, result.stderr
    assert "imported tiny version 1" in result.stdout
    registry = _registry(appliance_home)
    [model] = registry.models.list()
    assert (model.name, model.aliases, model.format) == ("tiny", ("small",), "gguf")
    assert model.path.parent == appliance_home / "store"
    stored, plain = model.path.read_bytes(), tiny.read_bytes()
    assert not stored.startswith(b"GGUF")
    assert plain[:48] not in stored  # the header and its metadata, not the zeros the tensor is
    assert [key.model_id for key in registry.store_keys.all()] == [model.id]
    assert not [p for p in appliance_home.iterdir() if p.name.startswith(".bundle-import-")]
    verified = run_appliance("models", "verify", "small")
    assert verified.returncode == 0, verified.stderr
    assert ("models.import", "success") in [(e.action, e.outcome) for e in registry.audit.recent()]


def _flip(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at > 0
    data[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["weights", "manifest"])
def test_a_flipped_byte_is_refused_and_writes_nothing(
    appliance_home: Path, bundle: Path, keys: Keys, tiny: Path, where: str
) -> None:
    """One bit changed in the weights or in the signed manifest: one refusal line, exit 1, nothing stored."""
    _flip(bundle, tiny.read_bytes()[:48] if where == "weights" else b'"profile":"models"')
    line = _one_error_line(
        run_appliance("models", "import-bundle", str(bundle), "--trust", str(keys["a"][1]))
    )
    assert "refused:" in line
    assert ("sha256" if where == "weights" else "signature") in line
    _assert_nothing_written(appliance_home)


def test_a_bundle_signed_by_another_key_is_refused(
    appliance_home: Path, tmp_path: Path, keys: Keys, tiny: Path
) -> None:
    """Signed by a key that is not trusted here: refused by name, nothing written."""
    evil = build_model_bundle(tmp_path / "evil", keys["evil"][0], "--model", str(tiny))
    line = _one_error_line(run_appliance("models", "import-bundle", str(evil), "--trust", str(keys["a"][1])))
    assert "not trusted" in line
    _assert_nothing_written(appliance_home)


def test_without_trusted_keys_nothing_is_imported(appliance_home: Path, bundle: Path) -> None:
    """A home that is no installed prefix's data needs --trust; without it the bundle is not even read."""
    line = _one_error_line(run_appliance("models", "import-bundle", str(bundle)))
    assert "--trust" in line
    _assert_nothing_written(appliance_home)


def test_an_installed_prefix_verifies_with_its_own_trusted_keys(
    installed_prefix: Path, tmp_path: Path, keys: Keys, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home = PREFIX/data: key `a` (trusted there) imports, key `b` is refused, --trust is not taken."""
    home = installed_prefix / "data"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    by_b = build_model_bundle(tmp_path / "b", keys["b"][0], "--model", str(tiny))
    assert "not trusted" in _one_error_line(run_appliance("models", "import-bundle", str(by_b)))
    overridden = run_appliance("models", "import-bundle", str(by_b), "--trust", str(keys["b"][1]))
    assert "installer.pyz trust" in _one_error_line(overridden)
    _assert_nothing_written(home)
    by_a = build_model_bundle(tmp_path / "a", keys["a"][0], "--model", str(tiny), "--name", "t1")
    result = run_appliance("models", "import-bundle", str(by_a))
    assert result.returncode == 0, result.stderr
    assert [m.name for m in _registry(home).models.list()] == ["t1"]


def test_require_signed_refuses_plain_files_and_takes_bundles(
    appliance_home: Path, bundle: Path, keys: Keys, tiny: Path
) -> None:
    """`models add` and `models import` of a plain file are refused naming the setting; a bundle imports."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text("[store]\nrequire_signed = true\n", encoding="utf-8")
    commands = (["models", "add", str(tiny)], ["models", "import", str(tiny), "--name", "plain"])
    for command in (*commands, ["bootstrap", "--model", str(tiny)]):
        line = _one_error_line(run_appliance(*command))
        assert "require_signed" in line
        assert "models import-bundle" in line
    _assert_nothing_written(appliance_home)
    result = run_appliance("models", "import-bundle", str(bundle), "--trust", str(keys["a"][1]))
    assert result.returncode == 0, result.stderr
    assert [m.name for m in _registry(appliance_home).models.list()] == ["tiny"]


def test_a_bundle_brings_a_new_version_of_a_registered_model(
    appliance_home: Path, bundle: Path, tmp_path: Path, keys: Keys
) -> None:
    """`--model-version 2` for a registered name: imported beside the serving version, inactive."""
    trust = ("--trust", str(keys["a"][1]))
    assert run_appliance("models", "import-bundle", str(bundle), *trust).returncode == 0
    newer = write_tiny_gguf(tmp_path / "tiny-v2.gguf", context_length=512)
    made = build_model_bundle(
        tmp_path / "v2", keys["a"][0], "--model", str(newer), "--name", "tiny", "--model-version", "2"
    )
    result = run_appliance("models", "import-bundle", str(made), *trust)
    assert result.returncode == 0, result.stderr
    assert "models activate" in result.stdout
    found = _registry(appliance_home).models.versions("tiny")
    versions = {m.version: (m.active, m.context_length) for m in found}
    assert versions == {"1": (True, 256), "2": (False, 512)}


def test_an_awq_folder_travels_in_a_model_bundle(appliance_home: Path, tmp_path: Path, keys: Keys) -> None:
    """A folder becomes an `awq` model, encrypted as a folder; the bundle's registry.json is not one of
    its files."""
    folder = write_awq_folder(tmp_path / "Qwen-AWQ")
    made = build_model_bundle(tmp_path / "dist", keys["a"][0], "--model", str(folder), "--name", "qwen")
    result = run_appliance("models", "import-bundle", str(made), "--trust", str(keys["a"][1]))
    assert result.returncode == 0, result.stderr
    [model] = _registry(appliance_home).models.list()
    assert (model.name, model.format) == ("qwen", "awq")
    exported = run_appliance("models", "export", "qwen", "--to", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    got = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert got == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_the_build_refuses_what_is_no_model(tmp_path: Path, keys: Keys) -> None:
    """Not a GGUF file, or --profile models without a model: one line, no bundle."""
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a GGUF file"):
        build_model_bundle(tmp_path / "dist", keys["a"][0], "--model", str(text))
    with pytest.raises(SystemExit, match="needs a --model"):
        build_model_bundle(tmp_path / "dist", keys["a"][0])
    assert not (tmp_path / "dist").exists()


@pytest.fixture
def signed_only_gateway(appliance_home: Path) -> tuple[Litestar, str]:
    """A real gateway app over a home with `[store] require_signed = true`, and an admin key."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text("[store]\nrequire_signed = true\n", encoding="utf-8")
    return gateway_app(appliance_home)


async def test_require_signed_refuses_the_admin_api_import(
    appliance_home: Path, tiny: Path, signed_only_gateway: tuple[Litestar, str]
) -> None:
    """POST /admin/models/import of a plain file, plain or encrypted: 403 `signed_bundle_required`."""
    app, admin = signed_only_gateway
    async with AsyncTestClient(app) as client:
        for encrypt in (True, False):
            body = {"path": str(tiny), "name": "plain", "encrypt": encrypt}
            answer = await client.post(
                "/admin/models/import", json=body, headers={"Authorization": f"Bearer {admin}"}
            )
            assert answer.status_code == 403, answer.text
            error = answer.json()["error"]
            assert error["code"] == "signed_bundle_required"
            assert "require_signed" in error["message"]
    _assert_nothing_written(appliance_home)
