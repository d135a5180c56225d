"""A code bundle's own models under `[store] require_signed = true`: the installer registers them with
`appliance models add-bundled`, which verifies the bundle's signature itself with the prefix's trusted keys
and each file against the signed manifest; a plain `models add` stays refused.

The install is real (installer in a fresh network namespace, venv, pip, data, migrations, models, planner);
the bundle's only wheel is an `appliance` script that runs this tree's real CLI, so no real wheels are built.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

from appliance.registry.registry import open_registry
from installer.bundlefile import read_bundle
from installer.crypto import default_verifier, load_public_key
from installer.limits import Limits
from installer.trust import TrustedKeys
from tests.api.console import APPLIANCE
from tests.gguf_files import write_tiny_gguf
from tests.installer.helpers import REPO, Recipe, make_bundle, run_installer

Keys = dict[str, tuple[Path, Path]]
SIGNED_ONLY = b"[store]\nrequire_signed = true\n"


def _real_cli_wheel(folder: Path) -> Path:
    """A wheel whose `appliance` console script execs this tree's real `appliance` with its sources."""
    dist = "realcli-1.0"
    module = (
        "import os, sys\n"
        "def main():\n"
        f"    os.environ['PYTHONPATH'] = {str(REPO)!r}\n"
        f"    os.execv({str(APPLIANCE)!r}, [{str(APPLIANCE)!r}, *sys.argv[1:]])\n"
    )
    files = {
        "realcli.py": module.encode(),
        f"{dist}.dist-info/METADATA": b"Metadata-Version: 2.1\nName: realcli\nVersion: 1.0\n",
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}.dist-info/entry_points.txt": b"[console_scripts]\nappliance = realcli:main\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for name, data in files.items()
    ]
    files[f"{dist}.dist-info/RECORD"] = ("\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _code_bundle(work: Path, key: Path) -> Path:
    """A signed cpu bundle: the real-CLI wheel, a tiny GGUF model `tiny`, settings with require_signed."""
    wheel = _real_cli_wheel(work / "wheel")
    meta = {"name": "tiny", "aliases": ["default"], "file": "tiny.gguf", "format": "gguf"}
    files = {
        f"wheels/{wheel.name}": ("wheel", wheel.read_bytes()),
        "models/tiny/tiny.gguf": ("model", write_tiny_gguf(work / "tiny.gguf").read_bytes()),
        "models/tiny/registry.json": ("model", json.dumps(meta).encode()),
        "config/settings.toml": ("config", SIGNED_ONLY),
    }
    recipe = Recipe(fake_app=False, files=files, requirements=("realcli",))
    return make_bundle(work, key, recipe, name="signed-only")


def _appliance(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(APPLIANCE), *args],
        env=os.environ | {"APPLIANCE_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_signed_only_install_registers_its_models_and_still_refuses_plain_ones(
    tmp_path: Path, keys: Keys
) -> None:
    """`install` of a bundle whose settings set require_signed: `tiny` is registered (from PREFIX/models,
    audited as from the signed bundle); `models add` of a plain file is refused naming the setting."""
    bundle, prefix = _code_bundle(tmp_path, keys["a"][0]), tmp_path / "prefix"
    done = run_installer("install", str(bundle), "--prefix", str(prefix), "--trust", str(keys["a"][1]))
    assert done.returncode == 0, done.stderr
    assert "model tiny: registered from the signed bundle appliance cpu version 1" in done.stderr
    registry = open_registry(prefix / "data" / "registry.db")
    [model] = registry.models.list()
    assert (model.name, model.aliases) == ("tiny", ("default",))
    assert model.path.parent.parent == prefix / "models"
    assert ("models.add", "success") in [(e.action, e.outcome) for e in registry.audit.recent()]
    plain = _appliance(prefix / "data", "models", "add", str(tmp_path / "tiny.gguf"), "--name", "plain")
    assert plain.returncode == 1
    assert "require_signed" in plain.stderr
    assert [m.name for m in open_registry(prefix / "data" / "registry.db").models.list()] == ["tiny"]


def test_add_bundled_checks_the_signature_and_every_file_itself(tmp_path: Path, keys: Keys) -> None:
    """Run by anyone else: a key not trusted here, or weights that are not the signed ones, are refused
    and nothing is registered; the signed weights with the signer's key register."""
    bundle = _code_bundle(tmp_path, keys["a"][0])
    unpacked, weights, home = tmp_path / "unpacked", tmp_path / "models", tmp_path / "home"
    trust = TrustedKeys().with_keys([load_public_key(keys["a"][1].read_text())])
    verified = read_bundle(
        bundle,
        trust,
        now=0,
        installed_version=None,
        allow_downgrade=False,
        verifier=default_verifier(),
        limits=Limits(),
        extract_to=unpacked,
    )
    signed = verified.manifest.member("models/tiny/tiny.gguf")
    assert signed is not None
    stored = weights / signed.sha256 / "tiny.gguf"
    stored.parent.mkdir(parents=True)
    write_tiny_gguf(stored, context_length=512)  # a valid GGUF, but not the one that was signed
    home.mkdir()
    (home / "settings.toml").write_bytes(SIGNED_ONLY)
    command = ["models", "add-bundled", str(bundle), "--unpacked", str(unpacked), "--weights", str(weights)]

    untrusted = _appliance(home, *command, "--trust", str(keys["evil"][1]))
    assert untrusted.returncode == 1
    assert "not trusted" in untrusted.stderr
    swapped = _appliance(home, *command, "--trust", str(keys["a"][1]))
    assert swapped.returncode == 1
    assert "is not the signed weights" in swapped.stderr
    assert open_registry(home / "registry.db").models.list() == []

    stored.write_bytes((tmp_path / "tiny.gguf").read_bytes())
    added = _appliance(home, *command, "--trust", str(keys["a"][1]))
    assert added.returncode == 0, added.stderr
    assert [m.name for m in open_registry(home / "registry.db").models.list()] == ["tiny"]
