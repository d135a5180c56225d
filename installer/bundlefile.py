"""Reading a bundle file: a strict ustar reader that feeds the pure verifier and, if asked, extracts.

The reader is ours rather than `tarfile` because tarfile reads pax and GNU long-name headers into
memory whatever their size, follows its own ideas of sparse files, and would happily extract links; a
bundle needs none of that. Only ustar headers for regular files are accepted, optionally preceded by
one small pax header carrying nothing but `path` and `size` (wheel names can exceed ustar's 100
bytes), and a member is read only after its header matched the signed manifest, so no read goes past
a declared size.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from installer.crypto import Verifier
from installer.errors import BundleFormatError, LimitError, UnsafeMemberError
from installer.limits import Limits
from installer.manifest import MANIFEST_NAME, SIGNATURE_BYTES, SIGNATURE_NAME, TRUST_FILE, Manifest
from installer.trust import TrustedKeys, TrustUpdate, root_update_from_bundle
from installer.verifier import MemberTracker, verify_manifest

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records of 20 blocks
_MAGICS = (b"ustar\x0000", b"ustar  \x00")


@dataclass(frozen=True)
class Header:
    """One tar header, decoded but not yet trusted."""

    path: str
    typeflag: bytes
    size: int


@dataclass(frozen=True)
class VerifiedBundle:
    """What a fully verified bundle gives the installer."""

    manifest: Manifest
    trust_update: TrustUpdate | None


def _padding(size: int) -> int:
    return -size % BLOCK


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise LimitError(f"tar header {what} uses base-256 (a size over 8 GiB is not supported)")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise BundleFormatError(f"tar header {what} is not an octal number") from None


MAX_PAX_BYTES = 4096  # a path of 240 bytes and a size need about 300
_PAX_KEYS = {"path", "size"}


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax records (`<len> <key>=<value>\n`), accepting only the keys a bundle needs."""
    records: dict[str, str] = {}
    while data:
        length_text = data.partition(b" ")[0]
        if not length_text.isdigit() or int(length_text) > len(data) or int(length_text) <= len(length_text):
            raise BundleFormatError("bundle has a malformed pax record")
        record, data = data[: int(length_text)], data[int(length_text) :]
        try:
            key, _, value = record[len(length_text) + 1 : -1].decode("utf-8").partition("=")
        except UnicodeDecodeError:
            raise UnsafeMemberError("bundle has a pax record that is not UTF-8") from None
        if not record.endswith(b"\n") or key not in _PAX_KEYS or key in records:
            raise UnsafeMemberError(f"bundle has a pax record {key[:20]!r}, which a bundle never needs")
        records[key] = value
    return records


def read_header(stream: BinaryIO) -> Header | None:
    """The next header, or None at the end of the archive; a pax header is merged into the next one."""
    header = _read_raw_header(stream)
    if header is None or header.typeflag != b"x":
        return header
    if header.size > MAX_PAX_BYTES:
        raise LimitError(f"bundle has a pax header of {header.size} bytes (limit {MAX_PAX_BYTES})")
    data = stream.read(header.size + _padding(header.size))[: header.size]
    if len(data) < header.size:
        raise BundleFormatError("bundle is truncated inside a pax header")
    records = _pax_records(data)
    following = _read_raw_header(stream)
    if following is None or following.typeflag == b"x":
        raise BundleFormatError("bundle has a pax header that is not followed by a member")
    size = following.size
    if "size" in records:
        if not records["size"].isdigit():
            raise BundleFormatError("bundle has a pax size that is not a number")
        size = int(records["size"])
    return Header(records.get("path", following.path), following.typeflag, size)


def _read_raw_header(stream: BinaryIO) -> Header | None:
    block = stream.read(BLOCK)
    if len(block) < BLOCK:
        raise BundleFormatError("bundle is truncated: a tar header is cut short")
    if block == bytes(BLOCK):
        return None
    # The magic first: a file that is no archive at all (random bytes, a wrong file) is named as such, not
    # by whichever header field its bytes happen to break.
    if block[257:265] not in _MAGICS:
        raise BundleFormatError("bundle is not a ustar archive (not an appliance bundle, or damaged)")
    checksum = _octal(block[148:156], "checksum")
    if checksum != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise BundleFormatError("bundle has a tar header with a wrong checksum")
    name, prefix = block[0:100].split(b"\0", 1)[0], block[345:500].split(b"\0", 1)[0]
    try:
        path = (prefix + b"/" + name if prefix else name).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeMemberError("bundle has a member whose name is not UTF-8") from None
    return Header(path, block[156:157], _octal(block[124:136], f"size of {path!r}"))


def _read_exact(stream: BinaryIO, size: int, limits: Limits, sink: Callable[[bytes], object]) -> None:
    left = size
    while left:
        chunk = stream.read(min(left, limits.chunk_bytes))
        if not chunk:
            raise BundleFormatError("bundle is truncated inside a member")
        sink(chunk)
        left -= len(chunk)


def _small_member(stream: BinaryIO, want: str, limit: int, limits: Limits) -> bytes:
    header = read_header(stream)
    if header is None or header.path != want:
        raise BundleFormatError(f"bundle does not start with {MANIFEST_NAME} then {SIGNATURE_NAME}")
    if header.typeflag not in (b"0", b"\0"):
        raise UnsafeMemberError(f"{want} is not a regular file")
    if header.size > limit:
        raise LimitError(f"{want} is {header.size} bytes, more than the limit of {limit}")
    parts: list[bytes] = []
    _read_exact(stream, header.size, limits, parts.append)
    stream.read(_padding(header.size))
    return b"".join(parts)


def _check_trailer(stream: BinaryIO) -> None:
    # After the first zero block: a second one, then at most a record of zero padding and nothing else.
    # A bundle is whole blocks (tar writes nothing else), so zeros that stop mid-block are a copy cut short.
    rest = stream.read(RECORD + 1)
    if len(rest) > RECORD or rest.strip(b"\0"):
        raise BundleFormatError("bundle has data after the end of the archive")
    if len(rest) < BLOCK or len(rest) % BLOCK:
        raise BundleFormatError("bundle is truncated: its end-of-archive blocks are cut short")


def _fan_out(sinks: list[Callable[[bytes], object]]) -> Callable[[bytes], None]:
    def feed(chunk: bytes) -> None:
        for sink in sinks:
            sink(chunk)

    return feed


class _Extractor:
    """Writes admitted members under a fresh folder, refusing to follow or replace anything."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, path: str) -> BinaryIO:
        target = self.root.joinpath(*path.split("/"))
        # Parents are created here by us only, so none of them can be a link planted by the bundle.
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        return os.fdopen(os.open(target, flags, 0o644), "wb")


def _open_bundle(path: Path) -> BinaryIO:
    """The bundle file, opened for reading; refused if it is not a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise BundleFormatError(f"cannot open bundle {path}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleFormatError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_signed_manifest(
    path: Path, trust: TrustedKeys, *, now: int, verifier: Verifier, limits: Limits
) -> Manifest:
    """Verify only the bundle's manifest (signed by a trusted key, not expired; versions are not compared):
    two small members are read, no member is checked. For the signed facts of a bundle whose members were
    checked by read_bundle already, or a refusal before a long read_bundle."""
    with _open_bundle(path) as stream:
        manifest_data = _small_member(stream, MANIFEST_NAME, limits.max_manifest_bytes, limits)
        signature = _small_member(stream, SIGNATURE_NAME, SIGNATURE_BYTES, limits)
    return verify_manifest(
        manifest_data,
        signature,
        trust,
        now=now,
        installed_version=None,
        allow_downgrade=False,
        verifier=verifier,
        limits=limits,
    )


def read_bundle(
    path: Path,
    trust: TrustedKeys,
    *,
    now: int,
    installed_version: int | None,
    highest_version: int | None = None,
    allow_downgrade: bool,
    verifier: Verifier,
    limits: Limits,
    extract_to: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifiedBundle:
    """Verify the bundle at `path` end to end; with `extract_to`, also write its members there."""
    with _open_bundle(path) as stream:
        manifest_data = _small_member(stream, MANIFEST_NAME, limits.max_manifest_bytes, limits)
        signature = _small_member(stream, SIGNATURE_NAME, SIGNATURE_BYTES, limits)
        manifest = verify_manifest(
            manifest_data,
            signature,
            trust,
            now=now,
            installed_version=installed_version,
            highest_version=highest_version,
            allow_downgrade=allow_downgrade,
            verifier=verifier,
            limits=limits,
        )
        tracker = MemberTracker(manifest, limits)
        extractor = _Extractor(extract_to) if extract_to is not None else None
        trust_data: list[bytes] = []
        while (header := read_header(stream)) is not None:
            member = tracker.admit(header.path, header.typeflag, header.size)
            if member.path == TRUST_FILE and member.size > limits.max_trust_file_bytes:
                raise LimitError(f"{TRUST_FILE} is more than {limits.max_trust_file_bytes} bytes")
            digest = hashlib.sha256()
            sinks: list[Callable[[bytes], object]] = [digest.update]
            if member.path == TRUST_FILE:
                sinks.append(trust_data.append)
            if progress is not None:
                sinks.append(lambda chunk: progress(len(chunk)))
            output = extractor.open(member.path) if extractor is not None else None
            if output is not None:
                sinks.append(output.write)
            try:
                _read_exact(stream, member.size, limits, _fan_out(sinks))
            finally:
                if output is not None:
                    output.close()
            stream.read(_padding(member.size))
            tracker.check_digest(member, digest)
        _check_trailer(stream)
        tracker.finish()
    update = None
    if manifest.member(TRUST_FILE) is not None:
        # Covered by the manifest's signature, but that signer is only a signing key: the root update
        # must stand on its own root signatures (trust.verify_root_update), or the bundle is refused.
        update = root_update_from_bundle(
            trust, b"".join(trust_data), verifier, now=now, max_bytes=limits.max_trust_file_bytes
        )
    return VerifiedBundle(manifest, update)
