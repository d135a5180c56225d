"""The bundle manifest: its schema, a strict parser and the canonical serialiser used when signing."""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from installer.errors import BundleFormatError, LimitError, UnsafeMemberError
from installer.limits import Limits

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNATURE_BYTES = 64  # an Ed25519 signature is exactly 64 bytes
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Which folder each role lives in, so a member cannot claim one role and land somewhere else.
ROLE_PREFIXES = {
    "wheel": "wheels/",
    "model": "models/",
    "config": "config/",
    "installer": "installer/",
    "trust": "trust/",
}
TRUST_FILE = "trust/root.json"  # a root update (installer/rootmeta.py); nothing else may change trust

# A conservative alphabet: wheel file names, model names and our own files all fit it, and it leaves no
# room for backslashes, control characters, NULs or look-alike Unicode.
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Member:
    """One file of the bundle as the manifest describes it."""

    path: str
    size: int
    sha256: str
    role: str


@dataclass(frozen=True)
class Target:
    """What the bundle's wheels were built for."""

    python: str  # "3.11"
    platform: str  # sysconfig.get_platform() with - and . as _, e.g. "linux_x86_64"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; only the verifier hands one out as trusted."""

    format: int
    name: str
    profile: str
    version: int
    created: int  # seconds since the epoch, UTC
    expires: int
    target: Target
    key_id: str
    requirements: tuple[str, ...]
    members: tuple[Member, ...]

    def member(self, path: str) -> Member | None:
        """The member at `path`, if the manifest lists one."""
        return next((m for m in self.members if m.path == path), None)


def check_member_path(path: str, limits: Limits) -> None:
    """Refuse any path that is not a plain relative path of safe components."""
    if not path or path.startswith("/"):
        raise UnsafeMemberError(f"member {path!r} has an absolute or empty path")
    if len(path.encode("utf-8", "surrogateescape")) > limits.max_path_bytes:
        raise LimitError(f"member path {path[:60]!r}... is longer than {limits.max_path_bytes} bytes")
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise UnsafeMemberError(f"member {path!r} has a '..', '.' or empty path component")
        if not _COMPONENT.fullmatch(component):
            raise UnsafeMemberError(f"member {path!r} has characters outside [A-Za-z0-9._+-]")


def format_time(seconds: int) -> str:
    """An epoch time as the manifest writes it."""
    return time.strftime(TIME_FORMAT, time.gmtime(seconds))


def _parse_time(value: object, field: str) -> int:
    if not isinstance(value, str):
        raise BundleFormatError(f"manifest field {field!r} must be a time string like 2026-01-31T00:00:00Z")
    try:
        return calendar.timegm(time.strptime(value, TIME_FORMAT))
    except ValueError:
        raise BundleFormatError(f"manifest field {field!r} is not a time like 2026-01-31T00:00:00Z") from None


def parse_json(data: bytes, what: str, **options: Any) -> Any:
    """Decode JSON bytes; whatever is wrong with them is one BundleFormatError naming `what`.

    ValueError covers more than JSONDecodeError: an integer of over 4300 digits is refused by Python
    itself; RecursionError is what a deeply nested document raises. Neither may escape as a traceback.
    """
    try:
        return json.loads(data.decode("utf-8"), **options)
    except BundleFormatError:
        raise
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError too
        raise BundleFormatError(f"{what} is not valid UTF-8 JSON ({error.__class__.__name__})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BundleFormatError("manifest has a duplicated JSON key")
    return dict(pairs)


def _fields(obj: object, want: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BundleFormatError(f"{where} must be a JSON object")
    if set(obj) != want:
        extra, missing = sorted(set(obj) - want), sorted(want - set(obj))
        raise BundleFormatError(f"{where} has unexpected fields {extra} or lacks {missing}")
    return obj


def _int(value: object, field: str, minimum: int = 0) -> int:
    # bool is a subclass of int in Python; `true` is not a version.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BundleFormatError(f"manifest field {field!r} must be an integer >= {minimum}")
    return value


def _str(value: object, field: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise BundleFormatError(f"manifest field {field!r} is not a valid string")
    return value


_TOP = {"format", "name", "profile", "version", "created", "expires", "target", "key_id"}
_TOP |= {"requirements", "members"}


def parse_manifest(data: bytes, limits: Limits) -> Manifest:
    """Parse manifest bytes strictly: exact fields, exact types, safe paths, no duplicates."""
    if len(data) > limits.max_manifest_bytes:
        raise LimitError(f"manifest is {len(data)} bytes, more than the limit of {limits.max_manifest_bytes}")
    raw = parse_json(data, "manifest", object_pairs_hook=_no_duplicate_keys)
    top = _fields(raw, _TOP, "manifest")
    if top["format"] != FORMAT_VERSION or isinstance(top["format"], bool):
        raise BundleFormatError(f"manifest format {top['format']!r} is not {FORMAT_VERSION}")
    target = _fields(top["target"], {"python", "platform"}, "manifest target")
    requirements = top["requirements"]
    if not isinstance(requirements, list) or not all(isinstance(r, str) and r for r in requirements):
        raise BundleFormatError("manifest field 'requirements' must be a list of strings")
    if not isinstance(top["members"], list):
        raise BundleFormatError("manifest field 'members' must be a list")
    if len(top["members"]) > limits.max_members:
        raise LimitError(f"manifest lists {len(top['members'])} members, more than {limits.max_members}")
    members = tuple(_parse_member(m, limits) for m in top["members"])
    paths = [m.path for m in members]
    if len(set(paths)) != len(paths):
        raise BundleFormatError("manifest lists the same member path twice")
    folders = {path.rsplit("/", i)[0] for path in paths for i in range(1, path.count("/") + 1)}
    if clash := sorted(folders & set(paths)):
        raise BundleFormatError(f"manifest lists {clash[0]!r} both as a file and as a folder")
    if sum(m.size for m in members) > limits.max_total_bytes:
        raise LimitError(f"manifest members add up to more than {limits.max_total_bytes} bytes")
    return Manifest(
        format=FORMAT_VERSION,
        name=_str(top["name"], "name", _NAME),
        profile=_str(top["profile"], "profile", _NAME),
        version=_int(top["version"], "version", minimum=1),
        created=_parse_time(top["created"], "created"),
        expires=_parse_time(top["expires"], "expires"),
        target=Target(_str(target["python"], "target.python"), _str(target["platform"], "target.platform")),
        key_id=_str(top["key_id"], "key_id", _SHA256),
        requirements=tuple(requirements),
        members=members,
    )


def _parse_member(obj: object, limits: Limits) -> Member:
    fields = _fields(obj, {"path", "size", "sha256", "role"}, "manifest member")
    path = _str(fields["path"], "members.path")
    check_member_path(path, limits)
    if path in (MANIFEST_NAME, SIGNATURE_NAME):
        raise BundleFormatError(f"manifest lists {path!r} as a member")
    role = _str(fields["role"], "members.role")
    prefix = ROLE_PREFIXES.get(role)
    if prefix is None:
        raise BundleFormatError(f"member {path!r} has unknown role {role!r}")
    if not path.startswith(prefix) or (role == "wheel" and not path.endswith(".whl")):
        raise BundleFormatError(f"member {path!r} does not belong to role {role!r}")
    if role == "trust" and path != TRUST_FILE:
        raise BundleFormatError(f"member {path!r}: the only trust member is {TRUST_FILE}")
    size = _int(fields["size"], "members.size")
    if size > limits.max_member_bytes:
        raise LimitError(f"member {path!r} declares {size} bytes, more than {limits.max_member_bytes}")
    return Member(path, size, _str(fields["sha256"], "members.sha256", _SHA256), role)


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest: sorted keys, no spaces, UTF-8, so signing is reproducible."""
    document = {
        "format": manifest.format,
        "name": manifest.name,
        "profile": manifest.profile,
        "version": manifest.version,
        "created": format_time(manifest.created),
        "expires": format_time(manifest.expires),
        "target": {"python": manifest.target.python, "platform": manifest.target.platform},
        "key_id": manifest.key_id,
        "requirements": list(manifest.requirements),
        "members": [
            {"path": m.path, "size": m.size, "sha256": m.sha256, "role": m.role} for m in manifest.members
        ],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), indent=None).encode("utf-8")
