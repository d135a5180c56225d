"""The installer checks the signature over the raw manifest bytes before parsing them, refuses any parse
error in one line with a non-zero exit, and finds the venv's Python by absolute path, never through PATH."""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest

from installer import errors
from installer.bundled_models import read_model_meta
from installer.crypto import CryptographyVerifier, load_public_key
from installer.limits import Limits
from installer.manifest import manifest_bytes, parse_manifest
from installer.pack import generate_key_pair, sign
from installer.rootmeta import parse_root_document
from installer.target_python import python_for
from installer.trust import TrustedKeys
from installer.verifier import verify_manifest
from tests.installer.helpers import HOST_TARGET, Recipe, make_bundle, run_installer

Keys = dict[str, tuple[Path, Path]]
NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_NUMBER = b'{"format": ' + b"9" * 5000 + b"}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Key `a` (trusted) and `evil` (never trusted)."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key_pair(folder, name) for name in ("a", "evil")}


def _trust(keys: Keys) -> TrustedKeys:
    return TrustedKeys().with_keys([load_public_key(keys["a"][1].read_text())])


def _verify(data: bytes, signature: bytes, trust: TrustedKeys) -> None:
    verify_manifest(
        data,
        signature,
        trust,
        now=int(time.time()),
        installed_version=None,
        allow_downgrade=False,
        verifier=CryptographyVerifier(),
        limits=Limits(),
    )


@pytest.mark.parametrize("data", [NESTED, HUGE_NUMBER, b"\xff not even UTF-8"], ids=["nested", "int", "utf8"])
def test_an_unsigned_manifest_is_refused_by_its_signature_not_by_the_parser(
    data: bytes, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged manifest never reaches the JSON parser: the signature over the raw bytes fails first."""
    import installer.verifier

    def never(*_: object) -> None:
        raise AssertionError("the manifest was parsed before its signature verified")

    monkeypatch.setattr(installer.verifier, "parse_manifest", never)
    with pytest.raises(errors.SignatureError, match="does not verify"):
        _verify(data, sign(keys["evil"][0], data), _trust(keys))


@pytest.mark.parametrize("data", [NESTED, HUGE_NUMBER], ids=["nested", "int"])
def test_a_signed_but_hostile_manifest_is_a_format_refusal(data: bytes, keys: Keys) -> None:
    """Even a trusted key's mistake is a BundleFormatError, not a RecursionError or a ValueError."""
    with pytest.raises(errors.BundleFormatError, match="not valid UTF-8 JSON"):
        _verify(data, sign(keys["a"][0], data), _trust(keys))


def test_the_named_key_must_be_the_signing_key(keys: Keys, tmp_path: Path) -> None:
    """A manifest signed by a trusted key but naming another key id is refused."""
    bundle = make_bundle(tmp_path, keys["a"][0], Recipe(version=3))
    with tarfile.open(bundle) as archive:
        data = archive.extractfile("manifest.json").read()  # type: ignore[union-attr]
    evil_id = load_public_key(keys["evil"][1].read_text()).key_id
    manifest = parse_manifest(data, Limits())
    forged = manifest_bytes(type(manifest)(**{**manifest.__dict__, "key_id": evil_id}))
    with pytest.raises(errors.SignatureError, match="names key"):
        _verify(forged, sign(keys["a"][0], forged), _trust(keys))


def test_a_hostile_trust_file_is_a_format_refusal() -> None:
    """The root document a bundle carries is parsed the same careful way."""
    with pytest.raises(errors.BundleFormatError):
        parse_root_document(NESTED[:60_000], 64 * 1024)


def _bundle_with_manifest(path: Path, manifest: bytes, signature: bytes) -> Path:
    """A ustar file holding just manifest.json and manifest.sig, as the strict reader expects."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("manifest.json", manifest), ("manifest.sig", signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("signer", "code"), [("a", 10), ("evil", 20)])
def test_the_cli_refuses_a_nested_manifest_in_one_line(
    signer: str, code: int, keys: Keys, tmp_path: Path
) -> None:
    """`installer verify` on a deeply nested manifest: one `installer: refused:` line, exit 10 if a
    trusted key signed it (format), 20 if not (signature); never a traceback."""
    bundle = _bundle_with_manifest(tmp_path / "nested.bundle", NESTED, sign(keys[signer][0], NESTED))
    done = run_installer("verify", str(bundle), "--prefix", str(tmp_path / "p"), "--trust", str(keys["a"][1]))
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr  # the pinned key's fingerprint, then the refusal
    assert lines[-1].startswith("installer: refused: ")


@pytest.mark.parametrize(
    "content", [b"{", NESTED, b'{"name": 5, "file": "x"}', b'{"name": "x", "file": "y", "aliases": "z"}']
)
def test_a_damaged_registry_json_is_one_install_step_error(content: bytes, tmp_path: Path) -> None:
    """A model's registry.json that cannot be read stops the install with a reason, not a traceback."""
    meta = tmp_path / "tiny" / "registry.json"
    meta.parent.mkdir()
    meta.write_bytes(content)
    with pytest.raises(errors.InstallStepError, match="model"):
        read_model_meta(meta)


def test_the_target_python_is_never_taken_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `python3.X` planted first on PATH, answering exactly what the bundle wants, is not chosen."""
    planted = tmp_path / "bin"
    planted.mkdir()
    fake = planted / f"python{HOST_TARGET.python}"
    platform = HOST_TARGET.platform.replace("_", "-", 1)
    fake.write_text(f"#!/bin/sh\necho {HOST_TARGET.python} {platform}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{planted}{os.pathsep}{os.environ.get('PATH', '')}")
    chosen = python_for(HOST_TARGET, None)
    assert os.path.isabs(chosen)
    assert not chosen.startswith(str(planted))
    assert chosen == sys.executable  # the Python running the installer matches this bundle


def test_python_must_be_given_as_an_absolute_path() -> None:
    """`--python python3` would be a PATH look-up: refused as a usage error."""
    with pytest.raises(errors.UsageError, match="absolute path"):
        python_for(HOST_TARGET, "python3")
