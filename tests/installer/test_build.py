"""Recipes, key generation, and the rule that no private key is ever tracked by git."""

from __future__ import annotations

import ast
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from installer.build import REPO, load_recipe
from installer.crypto import load_public_key

# Spelled in two parts so that this file does not match itself.
PRIVATE_MARKERS = (b"PRIVATE" + b" KEY-----",)  # PKCS#8, encrypted, OpenSSH, EC and RSA PEM headers


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "installer.build", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path: Path) -> None:
    """The private key is mode 0600 and the public key is a loadable Ed25519 PEM."""
    done = _build("keygen", "--out", str(tmp_path / "keys"), "--name", "site")
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "keys" / "site.key", tmp_path / "keys" / "site.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_public_key(public.read_text()).fingerprint in done.stdout
    again = _build("keygen", "--out", str(tmp_path / "keys"), "--name", "site")
    assert again.returncode != 0
    assert "exists" in again.stderr


def test_keygen_refuses_the_repository() -> None:
    """A key pair is never written inside the working tree."""
    done = _build("keygen", "--out", str(REPO / "bundles" / "keys"), "--name", "oops")
    assert done.returncode != 0
    assert "inside the repository" in done.stderr
    assert not (REPO / "bundles" / "keys" / "oops.key").exists()


def test_no_private_key_in_git() -> None:
    """No tracked (or about-to-be-tracked) file holds a private key."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    offenders = []
    for name in filter(None, listed):
        path = REPO / name.decode()
        if path.is_file() and any(marker in path.read_bytes() for marker in PRIVATE_MARKERS):
            offenders.append(name.decode())
    assert offenders == []


def test_public_keys_in_the_repo_are_public() -> None:
    """Every file under bundles/keys/ that ends in .pub is an Ed25519 public key."""
    for path in (REPO / "bundles" / "keys").glob("*.pub"):
        load_public_key(path.read_text())


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_recipes_load(profile: str) -> None:
    """Both recipes parse, name their profile, and ask pip for the appliance itself."""
    recipe = load_recipe(REPO / "bundles" / f"{profile}.toml")
    assert recipe.profile == profile
    assert any(r.startswith("airgap-appliance") for r in recipe.requirements)
    assert any(m.aliases == ("default",) for m in recipe.models)


def test_runtime_modules_parse_as_python_3_10() -> None:
    """The verifier and installer run on the host's Python 3.10+; only the build side may import 3.11's
    tomllib (a script the installer hands to the installed venv's own Python may: that one is 3.11+)."""
    build_only = {"build.py"}
    for path in sorted((REPO / "installer").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
        if path.name not in build_only:
            imported = {
                alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
            }
            imported |= {
                node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            }
            assert "tomllib" not in imported, path


def test_trust_new_sign_check_write_what_the_installer_accepts(tmp_path: Path) -> None:
    """`keygen --root`, `trust new`, `trust sign`, `trust check`: a root document the installer takes."""
    from installer.rootmeta import parse_root_document

    for extra in (["--root"], []):
        done = _build("keygen", "--out", str(tmp_path), *extra)
        assert done.returncode == 0, done.stderr
    assert "offline" in _build("keygen", "--out", str(tmp_path), "--root", "--name", "root2").stdout
    out = tmp_path / "root-1.json"
    revoked = "ab" * 32
    args = ["--version", "1", "--threshold", "1", "--root-key", str(tmp_path / "root.pub")]
    args += ["--signing-key", str(tmp_path / "bundle.pub"), "--revoke", revoked, "--out", str(out)]
    done = _build("trust", "new", *args)
    assert done.returncode == 0, done.stderr
    assert "not yet acceptable" in _build("trust", "check", str(out)).stdout
    for key in ("root", "bundle"):
        done = _build("trust", "sign", str(out), "--key", str(tmp_path / f"{key}.key"))
        assert done.returncode == 0, done.stderr
    check = _build("trust", "check", str(out))
    assert check.stdout.splitlines()[-1] == "acceptable", check.stdout
    document = parse_root_document(out.read_bytes(), 65536)
    assert document.root.version == 1
    assert document.root.revoked == {revoked}
    assert [k.pem() for k in document.root.signing_keys] == [(tmp_path / "bundle.pub").read_text()]
    assert len(document.signatures) == 2


def test_the_cpu_recipe_names_the_files_setup_fetches() -> None:
    """Every model of the CPU bundle is a file ./build.sh setup puts in the cache, none left out silently."""
    recipe = load_recipe(REPO / "bundles" / "cpu.toml")
    for model in recipe.models:
        assert not model.optional, model.name
        assert model.source.is_file(), model.source
        assert model.source.name in (REPO / "build.sh").read_text(), model.source
