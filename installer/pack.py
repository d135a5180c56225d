"""Writing and signing bundles (the connected side; needs `cryptography`, unlike the verifier)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from installer.crypto import PublicKey, load_public_key
from installer.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, Member, Target, manifest_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

Advance = Callable[[int], None]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """A file to put into a bundle at `path` with `role`."""

    path: str
    role: str
    file: Path


def generate_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub into `folder`; never overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: an existing key is never replaced; 0600 from the first byte, not chmod-ed afterwards.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public.write_text(public_key_of(private).pem())
    return private, public


def _private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_of(private: Path) -> PublicKey:
    """The public half of a private key file."""
    from cryptography.hazmat.primitives import serialization

    pem = (
        _private_key(private)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return load_public_key(pem.decode("ascii"))


def sign(private: Path, message: bytes) -> bytes:
    """An Ed25519 signature over `message`."""
    return _private_key(private).sign(message)


def hash_file(path: Path, advance: Advance | None = None) -> tuple[int, str]:
    """Size and sha256 of a file."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return size, digest.hexdigest()


def describe(sources: Sequence[Source], advance: Advance | None = None) -> tuple[Member, ...]:
    """Manifest entries for the sources."""
    members = []
    for source in sources:
        size, sha256 = hash_file(source.file, advance)
        members.append(Member(source.path, size, sha256, source.role))
    return tuple(members)


@dataclass(frozen=True)
class BundleSpec:
    """The manifest fields that are not about members."""

    name: str
    profile: str
    version: int
    created: int
    expires: int
    target: Target
    requirements: tuple[str, ...]


def _tarinfo(path: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Counting(io.RawIOBase):
    def __init__(self, source: io.BufferedReader, advance: Advance | None) -> None:
        self.source, self.advance = source, advance

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self.source.readinto(buffer)
        if self.advance is not None:
            self.advance(count)
        return count


def write_bundle(
    out: Path,
    spec: BundleSpec,
    sources: Sequence[Source],
    private: Path,
    members: tuple[Member, ...],
    advance: Advance | None = None,
) -> Manifest:
    """Write a signed bundle atomically: manifest.json, manifest.sig, then the members in order.

    pax format: tarfile then writes a pax header only where ustar cannot hold a name or a size.
    """
    manifest = Manifest(
        format=1,
        name=spec.name,
        profile=spec.profile,
        version=spec.version,
        created=spec.created,
        expires=spec.expires,
        target=spec.target,
        key_id=public_key_of(private).key_id,
        requirements=spec.requirements,
        members=members,
    )
    data = manifest_bytes(manifest)
    signature = sign(private, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as archive:
            for name, blob in ((MANIFEST_NAME, data), (SIGNATURE_NAME, signature)):
                archive.addfile(_tarinfo(name, len(blob), spec.created), io.BytesIO(blob))
            for source, member in zip(sources, members, strict=True):
                with source.file.open("rb") as raw:
                    archive.addfile(
                        _tarinfo(member.path, member.size, spec.created),
                        io.BufferedReader(_Counting(raw, advance)),
                    )
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return manifest
