"""The pure verifier, the ustar reader's format rules, and both Ed25519 paths (cryptography, openssl)."""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
from pathlib import Path

import pytest

from installer import errors
from installer.bundlefile import VerifiedBundle, read_bundle
from installer.crypto import CryptographyVerifier, Verifier, find_openssl, load_public_key
from installer.limits import Limits
from installer.manifest import manifest_bytes, parse_manifest
from installer.pack import sign
from installer.trust import TrustedKeys
from installer.verifier import verify_manifest
from tests.installer.helpers import Recipe, make_bundle, rewrite, run_installer

Keys = dict[str, tuple[Path, Path]]
OPENSSL = find_openssl()


def _trust(keys: Keys, *names: str) -> TrustedKeys:
    return TrustedKeys().with_keys([load_public_key(keys[n][1].read_text()) for n in names])


def _verified(bundle: Path, trust: TrustedKeys) -> VerifiedBundle:
    return read_bundle(
        bundle,
        trust,
        now=int(time.time()),
        installed_version=None,
        allow_downgrade=False,
        verifier=CryptographyVerifier(),
        limits=Limits(),
    )


def _read(
    bundle: Path, trust: TrustedKeys, limits: Limits | None = None, verifier: Verifier | None = None
) -> None:
    read_bundle(
        bundle,
        trust,
        now=int(time.time()),
        installed_version=None,
        allow_downgrade=False,
        verifier=verifier or CryptographyVerifier(),
        limits=limits or Limits(),
    )


def _check(
    data: bytes,
    signature: bytes,
    trust: TrustedKeys,
    *,
    installed: int | None = None,
    allow_downgrade: bool = False,
    verifier: Verifier | None = None,
) -> int:
    manifest = verify_manifest(
        data,
        signature,
        trust,
        now=int(time.time()),
        installed_version=installed,
        allow_downgrade=allow_downgrade,
        verifier=verifier or CryptographyVerifier(),
        limits=Limits(),
    )
    return manifest.version


def _manifest_of(bundle: Path) -> bytes:
    with tarfile.open(bundle) as archive:
        return archive.extractfile("manifest.json").read()  # type: ignore[union-attr]


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys) -> Path:
    """A valid small bundle signed by `a`."""
    return make_bundle(tmp_path, keys["a"][0], Recipe(version=5))


def test_host_openssl_supports_ed25519_rawin() -> None:
    """The fallback path exists on this host (openssl 3.x)."""
    assert OPENSSL is not None


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_both_verifiers_agree(backend: str, keys: Keys) -> None:
    """Both Ed25519 paths accept the right signature and reject a wrong one or a wrong key."""
    verifier: Verifier = CryptographyVerifier() if backend == "cryptography" else OPENSSL  # type: ignore[assignment]
    a, b = (load_public_key(keys[n][1].read_text()) for n in ("a", "b"))
    signature = sign(keys["a"][0], b"message")
    assert verifier.verify(a, signature, b"message")
    assert not verifier.verify(a, signature, b"messagE")
    assert not verifier.verify(b, signature, b"message")
    assert not verifier.verify(a, bytes(64), b"message")


def test_verify_without_cryptography_uses_openssl(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """With `cryptography` unimportable (-I -S: no site-packages) the installer verifies through openssl."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ok = run_installer(
        "verify",
        str(bundle),
        "--prefix",
        str(tmp_path / "p"),
        "--trust",
        str(keys["a"][1]),
        no_crypto=True,
        tmpdir=scratch,
    )
    assert ok.returncode == 0, ok.stderr
    assert "verified with openssl" in ok.stderr
    bad = run_installer(
        "verify",
        str(bundle),
        "--prefix",
        str(tmp_path / "p"),
        "--trust",
        str(keys["b"][1]),
        no_crypto=True,
        tmpdir=scratch,
    )
    assert bad.returncode == errors.UntrustedKeyError.exit_code
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "p").exists()


def test_openssl_rejects_a_forged_manifest(bundle: Path, keys: Keys) -> None:
    """The openssl path is a real check, not a pass-through: a changed manifest fails."""
    data = _manifest_of(bundle)
    signature = sign(keys["a"][0], data)
    trust = _trust(keys, "a")
    assert OPENSSL is not None
    assert _check(data, signature, trust, verifier=OPENSSL) == 5
    with pytest.raises(errors.SignatureError, match="does not verify"):
        _check(data.replace(b'"version":5', b'"version":6'), signature, trust, verifier=OPENSSL)


def test_manifest_size_is_bounded_before_parsing(bundle: Path, keys: Keys) -> None:
    """A manifest over the limit is refused without being read into the parser."""
    with pytest.raises(errors.LimitError, match=r"manifest\.json is"):
        _read(bundle, _trust(keys, "a"), Limits(max_manifest_bytes=100))


def test_downgrade_allowed_only_when_asked(bundle: Path, keys: Keys) -> None:
    """--allow-downgrade is the one way past rollback protection."""
    data = _manifest_of(bundle)
    signature = sign(keys["a"][0], data)
    with pytest.raises(errors.DowngradeError):
        _check(data, signature, _trust(keys, "a"), installed=7)
    assert _check(data, signature, _trust(keys, "a"), installed=7, allow_downgrade=True) == 5


@pytest.mark.parametrize(
    ("edit", "error", "text"),
    [
        (lambda m: m.replace(b'"format":1', b'"format":true'), errors.BundleFormatError, "format"),
        (lambda m: m.replace(b'"version":5', b'"version":true'), errors.BundleFormatError, "version"),
        (
            lambda m: m.replace(b'"format":1', b'"format":1,"format":1'),
            errors.BundleFormatError,
            "duplicated",
        ),
        (lambda m: m.replace(b'"role":"wheel"', b'"role":"model"'), errors.BundleFormatError, "role"),
        (
            lambda m: m.replace(b'"models/tiny/tiny.gguf"', b'"models/ti\\\\ny.gguf"'),
            errors.UnsafeMemberError,
            "characters",
        ),
        (lambda m: m[:-1], errors.BundleFormatError, "not valid UTF-8 JSON"),
        (
            lambda m: m.replace(b'"models/tiny/tiny.gguf"', b'"models/tiny/registry.json/x"'),
            errors.BundleFormatError,
            "both as a file and as a folder",
        ),
    ],
)
def test_manifest_schema_is_strict(
    edit: object, error: type[errors.InstallerError], text: str, bundle: Path
) -> None:
    """Unknown shapes are refused by the parser with a message naming the field."""
    with pytest.raises(error, match=text):
        parse_manifest(edit(_manifest_of(bundle)), Limits())  # type: ignore[operator]


def test_canonical_bytes_round_trip(bundle: Path) -> None:
    """The signed bytes are exactly the canonical serialisation, so rebuilding signs the same thing."""
    data = _manifest_of(bundle)
    assert manifest_bytes(parse_manifest(data, Limits())) == data


def test_members_must_follow_manifest_and_signature(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """A bundle whose first member is not manifest.json is refused before anything else is read."""
    out = rewrite(bundle, tmp_path / "order.bundle", lambda ms: [ms[1], ms[0], *ms[2:]])
    with pytest.raises(errors.BundleFormatError, match="does not start with"):
        _read(out, _trust(keys, "a"))


def test_trailing_data_is_refused(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """Bytes after the end-of-archive marker could smuggle anything; they are refused."""
    out = tmp_path / "trailing.bundle"
    out.write_bytes(bundle.read_bytes() + b"hidden")
    with pytest.raises(errors.BundleFormatError, match="after the end"):
        _read(out, _trust(keys, "a"))


def test_long_member_names_use_a_pax_path(tmp_path: Path, keys: Keys) -> None:
    """Wheel names longer than ustar's 100 bytes travel in a pax `path` record and verify."""
    name = "wheels/" + "x" * 130 + "-1.0-py3-none-any.whl"
    bundle = make_bundle(tmp_path, keys["a"][0], Recipe(files={name: ("wheel", b"PK")}))
    assert _verified(bundle, _trust(keys, "a")).manifest.member(name) is not None


@pytest.mark.parametrize(
    ("info", "text"),
    [
        ({"comment": "hello"}, "pax record 'comment'"),
        ({"linkpath": "/etc/passwd"}, "pax record 'linkpath'"),
    ],
)
def test_pax_records_beyond_path_and_size_are_refused(
    info: dict[str, str], text: str, bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    """A pax header may rename or size a member, nothing else."""

    def edit(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
        for member, _ in members:
            if member.name == "models/tiny/tiny.gguf":
                member.pax_headers = info
        return members

    out = tmp_path / "pax.bundle"
    with tarfile.open(bundle) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as sink:
        for member, data in edit([(m, source.extractfile(m).read()) for m in source.getmembers()]):  # type: ignore[union-attr]
            sink.addfile(member, io.BytesIO(data))
    with pytest.raises(errors.UnsafeMemberError, match=text):
        _read(out, _trust(keys, "a"))


def test_gnu_long_name_is_refused(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """GNU long-name headers (read whole into memory by tarfile) are not part of the format."""
    out = tmp_path / "gnu.bundle"
    with tarfile.open(bundle) as source, tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as sink:
        for member in source.getmembers():
            sink.addfile(member, source.extractfile(member))
        sink.addfile(tarfile.TarInfo("models/" + "x" * 200), io.BytesIO(b""))
    with pytest.raises(errors.UnsafeMemberError, match="GNU long name"):
        _read(out, _trust(keys, "a"))


def test_bad_header_checksum(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """A header whose checksum does not add up is refused as malformed."""
    data = bytearray(bundle.read_bytes())
    data[150] ^= 0x01
    out = tmp_path / "checksum.bundle"
    out.write_bytes(bytes(data))
    with pytest.raises(errors.BundleFormatError):
        _read(out, _trust(keys, "a"))


def test_not_a_regular_file(tmp_path: Path, keys: Keys) -> None:
    """A device or a FIFO given as the bundle is refused rather than read (or waited on) forever."""
    fifo = tmp_path / "fifo.bundle"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(errors.BundleFormatError, match="not a regular file"):
            _read(path, _trust(keys, "a"))


def test_root_update_rotation_is_applied_after_verification(tmp_path: Path, keys: Keys) -> None:
    """A root document in a bundle, signed by the pinned key `a` (a 1-of-1 root) and by every key it
    introduces, moves trust to it: `b` signs bundles, `a` only stays a root key; an applied one is ignored."""
    from installer.rootsign import new_root, sign_root

    a, b = (load_public_key(keys[n][1].read_text()) for n in ("a", "b"))
    document = new_root(1, [keys["a"][1]], 1, [keys["b"][1]], [], None)
    for name in ("a", "b"):
        document = sign_root(document, keys[name][0])
    bundle = make_bundle(
        tmp_path, keys["a"][0], Recipe(version=2, files={"trust/root.json": ("trust", document.to_bytes())})
    )
    verified = _verified(bundle, _trust(keys, "a"))
    assert verified.trust_update is not None
    rotated = _trust(keys, "a").rotated(verified.trust_update)
    assert rotated.usable(b.key_id) == b
    assert rotated.usable(a.key_id) is None
    assert set(rotated.root_keys) == {a.key_id}
    newer = TrustedKeys(_trust(keys, "a").keys, version=1)
    again = _verified(bundle, newer)
    assert again.trust_update is None


def test_truncated_bundle(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """A bundle cut short (a copy that did not finish) is refused, not half-trusted."""
    out = tmp_path / "short.bundle"
    out.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(errors.BundleFormatError, match="truncated"):
        _read(out, _trust(keys, "a"))


def test_a_bundle_cut_short_by_one_byte_is_reported_as_truncated(
    bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    """The last byte missing (a copy stopped at the very end) is a truncation, not 'data after the end'."""
    out = tmp_path / "short.bundle"
    out.write_bytes(bundle.read_bytes()[:-1])
    with pytest.raises(errors.BundleFormatError, match="truncated: its end-of-archive blocks are cut short"):
        _read(out, _trust(keys, "a"))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_named_as_no_bundle(seed: int, keys: Keys, tmp_path: Path) -> None:
    """A file that is no archive at all is refused as such, never as a size limit or a field's format."""
    out = tmp_path / "random.bundle"
    out.write_bytes(random.Random(seed).randbytes(20_000))  # noqa: S311 -- reproducible junk, not a secret
    with pytest.raises(errors.BundleFormatError, match="not a ustar archive"):
        _read(out, _trust(keys, "a"))


def test_base256_size_is_refused(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """GNU base-256 sizes (how tar says 'more than 8 GiB' without pax) are refused as a limit."""
    with tarfile.open(bundle) as archive:
        header = archive.getmember("models/tiny/tiny.gguf").offset
    data = bytearray(bundle.read_bytes())
    data[header + 124 : header + 136] = b"\x80" + (1 << 40).to_bytes(11, "big")
    data[header + 148 : header + 156] = b" " * 8
    checksum = sum(data[header : header + 512])
    data[header + 148 : header + 156] = f"{checksum:06o}\0 ".encode()
    out = tmp_path / "base256.bundle"
    out.write_bytes(bytes(data))
    with pytest.raises(errors.LimitError, match="base-256"):
        _read(out, _trust(keys, "a"))
