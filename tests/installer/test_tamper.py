"""The tamper corpus: each broken bundle is refused with its own message and exit code, nothing written."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from installer import errors
from tests.installer.helpers import DAY, Recipe, make_bundle, rewrite, run_installer, snapshot

Keys = dict[str, tuple[Path, Path]]
Members = list[tuple[tarfile.TarInfo, bytes]]
MODEL = "models/tiny/tiny.gguf"


def _flip(bundle: Path, name: str, at: int = 3) -> Path:
    """Flip one byte inside member `name`'s data (tar headers and checksums stay valid)."""
    with tarfile.open(bundle) as archive:
        offset = archive.getmember(name).offset_data
    data = bytearray(bundle.read_bytes())
    data[offset + at] ^= 0x01
    out = bundle.with_name(f"flipped-{name.replace('/', '_')}.bundle")
    out.write_bytes(bytes(data))
    return out


def _edit(bundle: Path, edit: Callable[[Members], Members], tag: str) -> Path:
    return rewrite(bundle, bundle.with_name(f"{tag}.bundle"), edit)


def _special(kind: bytes, name: str = MODEL) -> Callable[[Members], Members]:
    def edit(members: Members) -> Members:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, "/etc/passwd"
        return [*[m for m in members if m[0].name != name], (info, b"")]

    return edit


def _renamed(members: Members) -> Members:
    for info, _ in members:
        if info.name == MODEL:
            info.name = "models/tiny/renamed.gguf"
    return members


def _manifest_flip(bundle: Path) -> Path:
    # A changed hex digit keeps the JSON valid, so it is the signature that must catch it.
    with tarfile.open(bundle) as archive:
        offset = archive.getmember("manifest.json").offset_data
        text = archive.extractfile("manifest.json").read()  # type: ignore[union-attr]
    at = text.index(b'"sha256":"') + len(b'"sha256":"')
    data = bytearray(bundle.read_bytes())
    data[offset + at] = ord("0") if data[offset + at] != ord("0") else ord("1")
    out = bundle.with_name("manifest-flip.bundle")
    out.write_bytes(bytes(data))
    return out


def _sparse_huge(bundle: Path) -> Path:
    """Replace the model with a header claiming 64 GiB, and make the file that big, sparsely."""
    out = _edit(bundle, lambda ms: [m for m in ms if m[0].name != MODEL], "sparse")
    data = out.read_bytes().rstrip(b"\0")
    end = len(data) + (-len(data) % 512)
    info = tarfile.TarInfo(MODEL)
    info.size = 8 * 1024**3 - 1  # the largest ustar size; base-256 sizes are refused separately
    with out.open("r+b") as sink:
        sink.seek(end)
        sink.write(info.tobuf(tarfile.USTAR_FORMAT))
        sink.truncate(end + 512 + info.size + 1024)
    return out


CASES: dict[str, tuple[Callable[[Path, Path], Path], type[errors.InstallerError], str]] = {
    "manifest-byte": (lambda b, w: _manifest_flip(b), errors.SignatureError, "signature does not verify"),
    "signature-byte": (
        lambda b, w: _flip(b, "manifest.sig"),
        errors.SignatureError,
        "signature does not verify",
    ),
    "added-member": (
        lambda b, w: _edit(b, lambda ms: [*ms, (tarfile.TarInfo("models/tiny/extra.bin"), b"x")], "added"),
        errors.MemberError,
        "not in the manifest",
    ),
    "dropped-member": (
        lambda b, w: _edit(b, lambda ms: [m for m in ms if m[0].name != MODEL], "dropped"),
        errors.MemberError,
        "in the manifest but not in the bundle",
    ),
    "renamed-member": (lambda b, w: _edit(b, _renamed, "renamed"), errors.MemberError, "not in the manifest"),
    "duplicated-member": (
        lambda b, w: _edit(b, lambda ms: [*ms, *[m for m in ms if m[0].name == MODEL]], "dup"),
        errors.MemberError,
        "appears twice",
    ),
    "dotdot-path": (
        lambda b, w: _edit(b, lambda ms: [*ms, (tarfile.TarInfo("models/../../evil"), b"x")], "dotdot"),
        errors.UnsafeMemberError,
        "'..'",
    ),
    "absolute-path": (
        lambda b, w: _edit(b, lambda ms: [*ms, (tarfile.TarInfo("/etc/evil"), b"x")], "absolute"),
        errors.UnsafeMemberError,
        "absolute",
    ),
    "symlink": (
        lambda b, w: _edit(b, _special(tarfile.SYMTYPE), "symlink"),
        errors.UnsafeMemberError,
        "a symlink",
    ),
    "hardlink": (
        lambda b, w: _edit(b, _special(tarfile.LNKTYPE), "hardlink"),
        errors.UnsafeMemberError,
        "a hardlink",
    ),
    "device": (
        lambda b, w: _edit(b, _special(tarfile.CHRTYPE), "device"),
        errors.UnsafeMemberError,
        "a character device",
    ),
    "longer-member": (
        lambda b, w: _edit(
            b, lambda ms: [(i, d + b"more" if i.name == MODEL else d) for i, d in ms], "longer"
        ),
        errors.MemberError,
        "longer than the",
    ),
    "sparse-huge-member": (lambda b, w: _sparse_huge(b), errors.MemberError, "longer than the"),
}


@pytest.fixture
def good_bundle(tmp_path: Path, keys: Keys) -> Path:
    """A valid version-2 bundle signed by the trusted key `a`."""
    return make_bundle(tmp_path / "work", keys["a"][0], Recipe(version=2))


def _refused(
    prefix: Path, bundle: Path, tmp_path: Path, error: type[errors.InstallerError], text: str
) -> None:
    """Install must refuse with the class's exit code and message; prefix and temp folder unchanged."""
    before = snapshot(prefix)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    done = run_installer("install", str(bundle), "--prefix", str(prefix), tmpdir=scratch)
    assert done.returncode == error.exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("installer: refused: ")
    assert text in lines[0]
    assert snapshot(prefix) == before
    assert list(scratch.iterdir()) == []


def test_good_bundle_verifies_offline(installed_prefix: Path, good_bundle: Path) -> None:
    """The untampered bundle passes `verify` inside the empty network namespace."""
    done = run_installer("verify", str(good_bundle), "--prefix", str(installed_prefix))
    assert done.returncode == 0, done.stderr
    assert "verify: ok: appliance cpu version 2" in done.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_bundle_is_refused(
    case: str, installed_prefix: Path, good_bundle: Path, tmp_path: Path
) -> None:
    """Each tampering is refused with its own message and class, writing nothing."""
    make, error, text = CASES[case]
    _refused(installed_prefix, make(good_bundle, tmp_path), tmp_path, error, text)


@pytest.mark.parametrize(
    "member", ["wheels/fakeappliance-2.0-py3-none-any.whl", MODEL, "models/tiny/registry.json"]
)
def test_flipped_byte_in_member_is_refused(
    member: str, installed_prefix: Path, good_bundle: Path, tmp_path: Path
) -> None:
    """A single flipped byte in any member is caught by its sha256."""
    _refused(
        installed_prefix,
        _flip(good_bundle, member),
        tmp_path,
        errors.MemberError,
        f"member {member!r} has sha256",
    )


def test_spliced_member_from_another_signed_bundle(
    installed_prefix: Path, good_bundle: Path, tmp_path: Path, keys: Keys
) -> None:
    """A same-size member taken from another validly signed bundle does not match this manifest."""
    other = make_bundle(
        tmp_path / "other", keys["a"][0], Recipe(version=2, files={MODEL: ("model", b"GGUF evil " * 50)})
    )
    with tarfile.open(other) as archive:
        spliced = archive.extractfile(MODEL).read()  # type: ignore[union-attr]
    out = _edit(good_bundle, lambda ms: [(i, spliced if i.name == MODEL else d) for i, d in ms], "spliced")
    _refused(installed_prefix, out, tmp_path, errors.MemberError, f"member {MODEL!r} has sha256")


def test_expired_manifest(installed_prefix: Path, tmp_path: Path, keys: Keys) -> None:
    """A manifest past its expiry is refused even though its signature is good."""
    bundle = make_bundle(tmp_path / "w", keys["a"][0], Recipe(version=2, expires_in=-DAY))
    _refused(installed_prefix, bundle, tmp_path, errors.ExpiredError, "expired")


@pytest.mark.parametrize("version", [0, 1])
def test_lower_or_equal_version(version: int, installed_prefix: Path, tmp_path: Path, keys: Keys) -> None:
    """Rollback protection: a version not higher than the current one is refused."""
    bundle = make_bundle(tmp_path / "w", keys["a"][0], Recipe(version=max(version, 1)))
    _refused(
        installed_prefix,
        bundle,
        tmp_path,
        errors.DowngradeError,
        "not higher than installed version 1 (--allow-downgrade",
    )


def test_untrusted_key(installed_prefix: Path, tmp_path: Path, keys: Keys) -> None:
    """A bundle signed by a key the prefix never pinned is refused."""
    bundle = make_bundle(tmp_path / "w", keys["evil"][0], Recipe(version=2))
    _refused(installed_prefix, bundle, tmp_path, errors.UntrustedKeyError, "not trusted")


def test_revoked_key(installed_prefix: Path, tmp_path: Path, keys: Keys) -> None:
    """After `trust revoke`, a bundle signed by that key is refused as revoked."""
    assert run_installer("trust", "add", str(keys["b"][1]), "--prefix", str(installed_prefix)).returncode == 0
    from installer.crypto import load_public_key

    revoked = load_public_key(keys["a"][1].read_text()).key_id
    done = run_installer("trust", "revoke", revoked, "--prefix", str(installed_prefix))
    assert done.returncode == 0, done.stderr
    bundle = make_bundle(tmp_path / "w", keys["a"][0], Recipe(version=2))
    _refused(installed_prefix, bundle, tmp_path, errors.RevokedKeyError, "revoked key")
