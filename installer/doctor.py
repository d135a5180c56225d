"""`installer doctor`: is the prefix still what the installer made? Reads everything, writes nothing.

One line per check, `ok|FAIL|warn NAME: DETAIL`: the state and the `current` link; every file of every
installed version's bundle against that version's manifest (`versions/<N>/manifest.json`, written at install;
each changed, missing or extra file is its own FAIL); the shared weights against the SHA-256 their folder is
named after (large files read in chunks, with progress); the systemd unit against what the installer would
write, and `systemctl is-active` where systemd runs; the data directory's owner and mode, the key files'
mode; and that code, venvs and weights are root's and not writable by the service user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from installer.errors import InstallerError, StateError
from installer.limits import Limits
from installer.manifest import MANIFEST_NAME, Manifest, parse_manifest
from installer.progress import Progress
from installer.state import InstallState, Prefix
from installer.systemd import SOCKET_NAME, UNIT_NAME, socket_text, unit_text
from installer.uninstall import our_unit, systemctl, systemd_manages, systemd_running, unit_home

CHUNK = 1 << 20
BIG_FILE = 64 << 20  # files from this size on show progress while they are hashed
SHOWN = 3  # offending paths named in one line; the rest are counted

Say = Callable[[str], None]


class Checks:
    """Prints each check's line as it is made and counts the failures."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.failed = 0
        self._digests: dict[tuple[int, int, int, int], str] = {}

    def ok(self, name: str, detail: str) -> None:
        self.say(f"ok {name}: {detail}")

    def warn(self, name: str, detail: str) -> None:
        self.say(f"warn {name}: {detail}")

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        self.say(f"FAIL {name}: {detail}")

    def sha256(self, path: Path, info: os.stat_result) -> str:
        """A file's SHA-256, read in chunks; a file hard-linked twice (weights) is read once."""
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key not in self._digests:
            digest = hashlib.sha256()
            with path.open("rb") as stream:
                if info.st_size >= BIG_FILE:
                    with Progress("sha256", info.st_size) as bar:
                        while chunk := stream.read(CHUNK):
                            digest.update(chunk)
                            bar.advance(len(chunk))
                else:
                    while chunk := stream.read(CHUNK):
                        digest.update(chunk)
            self._digests[key] = digest.hexdigest()
        return self._digests[key]


def _files(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            yield Path(folder) / name


def _mode(path: Path) -> int:
    """A path's mode bits; 0 for one gone meanwhile (the running service makes and removes files)."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def _listed(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def check_current(prefix: Prefix, state: InstallState, checks: Checks) -> int | None:
    """`current` names an installed, complete version whose folder exists."""
    try:
        current = prefix.current()
    except StateError as error:
        checks.fail("current", error.message)
        return None
    installed = {v.version for v in state.installed}
    if current is None:
        checks.fail("current", f"{prefix.current_link} is missing: no version is current")
    elif current not in installed:
        checks.fail("current", f"points at version {current}, which the state does not list as installed")
    elif not prefix.version_dir(current).is_dir():
        checks.fail("current", f"points at {prefix.version_dir(current)}, which is missing")
    else:
        checks.ok("current", f"version {current} (installed: {', '.join(map(str, sorted(installed)))})")
        return current
    return None


def _manifest(prefix: Prefix, version: int, checks: Checks) -> Manifest | None:
    root = prefix.version_dir(version)
    name = f"manifest {version}"
    if not root.is_dir():
        checks.fail(name, f"{root} is missing")
        return None
    try:
        data = (root / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        checks.warn(name, f"{root / MANIFEST_NAME} is missing (installed before doctor); files not checked")
        return None
    except OSError as error:
        checks.fail(name, f"cannot read {root / MANIFEST_NAME}: {error.strerror}")
        return None
    try:
        manifest = parse_manifest(data, Limits())
    except InstallerError as error:
        checks.fail(name, f"{root / MANIFEST_NAME}: {error.message}")
        return None
    if manifest.version != version:
        checks.fail(name, f"{root / MANIFEST_NAME} is the manifest of version {manifest.version}")
        return None
    return manifest


def check_version_files(prefix: Prefix, version: int, checks: Checks) -> Manifest | None:
    """Every member of the version's bundle is there with the manifest's size and SHA-256; nothing else."""
    manifest = _manifest(prefix, version, checks)
    if manifest is None:
        return None
    bundle = prefix.version_dir(version) / "bundle"
    before = checks.failed
    for member in manifest.members:
        path = bundle.joinpath(*member.path.split("/"))
        shown = path.relative_to(prefix.root)
        try:
            info = path.lstat()
        except FileNotFoundError:
            checks.fail("file", f"{shown}: missing")
            continue
        except OSError as error:
            checks.fail("file", f"{shown}: cannot read ({error.strerror})")
            continue
        if not stat.S_ISREG(info.st_mode):
            checks.fail("file", f"{shown}: changed (not a regular file)")
        elif info.st_size != member.size:
            checks.fail("file", f"{shown}: changed (size {info.st_size}, manifest {member.size})")
        else:
            try:
                digest = checks.sha256(path, info)
            except OSError as error:
                checks.fail("file", f"{shown}: cannot read ({error.strerror})")
                continue
            if digest != member.sha256:
                checks.fail("file", f"{shown}: changed (SHA-256 differs from the manifest)")
    listed = {member.path for member in manifest.members}
    for path in sorted(_files(bundle)):
        if path.relative_to(bundle).as_posix() not in listed:
            checks.fail("file", f"{path.relative_to(prefix.root)}: extra (not in the manifest)")
    if checks.failed == before:
        size = sum(m.size for m in manifest.members) / 1e6
        checks.ok(f"files {version}", f"{len(manifest.members)} files match the manifest ({size:.1f} MB)")
    return manifest


def check_weights(prefix: Prefix, checks: Checks) -> None:
    """Each file in PREFIX/models/<sha256>/ has that SHA-256."""
    if not prefix.models.is_dir():
        checks.ok("weights", f"no shared weights in {prefix.models}")
        return
    count, before = 0, checks.failed
    for path in sorted(_files(prefix.models)):
        shown = path.relative_to(prefix.root)
        count += 1
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                checks.fail("weights", f"{shown}: not a regular file")
            elif checks.sha256(path, info) != path.parent.name:
                checks.fail("weights", f"{shown}: changed (SHA-256 differs from its folder's name)")
        except OSError as error:
            checks.fail("weights", f"{shown}: cannot read ({error.strerror})")
    if checks.failed == before:
        checks.ok("weights", f"{count} files in {prefix.models} match their SHA-256")


def _unit_settings(text: str) -> tuple[str | None, tuple[str, ...]]:
    """The service user and the --allow-ip networks an installed unit was written with."""
    user: str | None = None
    allowed: tuple[str, ...] = ()
    for line in text.splitlines():
        if line.startswith("User="):
            user = line.removeprefix("User=")
        elif line.startswith("IPAddressAllow="):
            allowed = tuple(
                a for a in line.removeprefix("IPAddressAllow=").split() if a not in ("127.0.0.1", "::1")
            )
    return user, allowed


def _difference(text: str, expected: str) -> str | None:
    """Where `text` first differs from `expected` (line number and the line seen), or None."""
    if text == expected:
        return None
    got, want = text.splitlines(), expected.splitlines()
    line = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
    )
    seen = got[line] if line < len(got) else "(missing)"
    return f"line {line + 1}: {seen!r}"


def _check_socket(path: Path, root: Path, allowed: tuple[str, ...], checks: Checks) -> None:
    """The socket unit beside the service: the installer's text for the address it listens on."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        checks.fail("socket unit", f"{path} is missing (the service requires it)")
        return
    listen = next((s[len("ListenStream=") :] for s in text.splitlines() if s.startswith("ListenStream=")), "")
    difference = _difference(text, socket_text(root, listen, allowed))
    if difference is not None:
        checks.fail("socket unit", f"{path} differs from what the installer writes ({difference})")
    else:
        checks.ok("socket unit", f"{path} is the installer's (listens on {listen})")


def check_unit(
    prefix: Prefix, state: InstallState, current: int | None, unit_dir: Path, checks: Checks
) -> str | None:
    """The unit is the one the installer writes for this prefix; return its service user."""
    path = unit_dir / UNIT_NAME
    unit = our_unit(prefix, unit_dir)
    if unit is None:
        if path.exists():
            checks.warn("unit", f"{path} serves another prefix (not {prefix.data})")
        else:
            checks.ok("unit", f"none in {unit_dir} (installed without --systemd)")
        return None
    text = unit.read_text(encoding="utf-8")
    user, allowed = _unit_settings(text)
    profile = next((v.profile for v in state.installed if v.version == current), "cpu")
    # The prefix as the unit spells it (the admin may have given it another way, e.g. relative, here).
    root = (unit_home(text) or prefix.data).parent
    expected = unit_text(root, root / "current", allowed, profile == "gpu", user or "")
    difference = _difference(text, expected)
    if difference is not None:
        checks.fail("unit", f"{unit} differs from what the installer writes ({difference})")
    else:
        checks.ok("unit", f"{unit} is the installer's (service user {user})")
    _check_socket(unit.parent / SOCKET_NAME, root, allowed, checks)
    if not systemd_running():
        checks.warn("service", "systemd not running; the unit's state not checked")
    elif not systemd_manages(unit):
        checks.warn("service", f"systemd does not load units from {unit_dir}; state not checked")
    else:
        for name in (SOCKET_NAME, UNIT_NAME):
            active = systemctl("is-active", name).stdout.strip() or "unknown"
            if active == "active":
                checks.ok("service", f"{name} is active")
            else:
                checks.warn("service", f"{name} is {active}")
    return user


def _service_ids(user: str | None, checks: Checks) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        checks.fail("service user", f"{user} (the unit's User=) does not exist on this host")
        return None
    return entry.pw_uid, entry.pw_gid


def check_data(prefix: Prefix, service: tuple[int, int] | None, user: str | None, checks: Checks) -> None:
    """PREFIX/data: the service user's (when there is one), not world-writable; key files 0600."""
    try:
        info = prefix.data.lstat()
    except FileNotFoundError:
        checks.fail("data", f"{prefix.data} is missing")
        return
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        checks.fail("data", f"{prefix.data} is not a directory")
        return
    problems = []
    if service is not None and info.st_uid != service[0]:
        problems.append(f"owned by uid {info.st_uid}, not the service user {user}")
    if mode & 0o002:
        problems.append(f"world-writable (mode {mode:04o})")
    open_to_all = [
        str(path.relative_to(prefix.root))
        for path in sorted(prefix.data.rglob("*"))
        if not path.is_symlink() and _mode(path) & 0o002
    ]
    if open_to_all:
        problems.append(f"world-writable inside: {_listed(open_to_all)}")
    if problems:
        checks.fail("data", f"{prefix.data}: {'; '.join(problems)}")
    else:
        owner = f"owned by {user}" if service is not None else f"owned by uid {info.st_uid}"
        checks.ok("data", f"{prefix.data} {owner}, mode {mode:04o}, not world-writable")
    keys = sorted(p for p in prefix.data.glob("*.key*") if p.is_file() and not p.is_symlink())
    loose = [f"{p.name} (mode {stat.S_IMODE(_mode(p)):04o})" for p in keys if _mode(p) & 0o077]
    if loose:
        checks.fail("key files", f"not 0600: {_listed(loose)}")
    elif keys:
        checks.ok("key files", f"{', '.join(p.name for p in keys)}: 0600")
    else:
        checks.ok("key files", "none in the data directory yet")


def check_code(prefix: Prefix, service: tuple[int, int] | None, user: str | None, checks: Checks) -> None:
    """The prefix, versions, venvs, weights and the state: root's (with a service user, as root) and not
    writable by the service user; in any case writable by no other local user."""
    # The prefix itself too: whoever can write it can swap `current`.
    paths = [prefix.root, prefix.state_file, prefix.current_link]
    for top in (prefix.versions, prefix.models):
        paths.append(top)
        for folder, dirs, names in os.walk(top):
            paths.extend(Path(folder) / name for name in [*dirs, *names])
    as_root = os.geteuid() == 0
    wrong: list[str] = []
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        writable = not stat.S_ISLNK(info.st_mode) and bool(info.st_mode & 0o002)
        if service is not None:
            uid, gid = service
            writable = writable or info.st_uid == uid
            writable = writable or (
                not stat.S_ISLNK(info.st_mode) and bool(info.st_mode & 0o020) and info.st_gid == gid
            )
            if as_root and info.st_uid != 0:
                writable = True
        if writable:
            wrong.append(str(path.relative_to(prefix.root)))
    who = f"the service user {user} or other users" if service is not None else "other users"
    if wrong:
        checks.fail("code", f"{len(wrong)} paths writable by {who} (or not root's): {_listed(wrong)}")
    else:
        owner = "root's, " if service is not None and as_root else ""
        checks.ok("code", f"{len(paths)} paths of versions, venvs and weights {owner}not writable by {who}")


def doctor(prefix_root: Path, unit_dir: Path, say: Say) -> bool:
    """Run every check; True when none failed. A folder that is no prefix is refused (StateError)."""
    prefix = Prefix(prefix_root)
    if not prefix.exists():
        raise StateError(f"{prefix.root} is not an appliance prefix (no {prefix.state_file.name})")
    checks = Checks(say)
    try:
        state = prefix.load()
    except StateError as error:
        checks.fail("state", error.message)
        return False
    checks.ok("state", f"{prefix.state_file}: {len(state.installed)} versions installed")
    current = check_current(prefix, state, checks)
    for version in sorted(v.version for v in state.installed):
        check_version_files(prefix, version, checks)
    check_weights(prefix, checks)
    user = check_unit(prefix, state, current, unit_dir, checks)
    service = _service_ids(user, checks)
    check_data(prefix, service, user, checks)
    check_code(prefix, service, user, checks)
    return checks.failed == 0
