"""Small signed bundles, a fake appliance wheel, an offline installer runner and prefix snapshots."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from installer.limits import Limits
from installer.manifest import MANIFEST_NAME, Target, parse_manifest
from installer.pack import BundleSpec, Source, describe, write_bundle

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400
HOST_TARGET = Target(
    f"{sys.version_info[0]}.{sys.version_info[1]}",
    __import__("sysconfig").get_platform().replace("-", "_").replace(".", "_"),
)
UNSHARE = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0

# Runs inside the child: proves the network is absent (an empty netns has no route, so a UDP connect fails
# at once with ENETUNREACH and sends nothing), optionally proves `cryptography` is unimportable, then runs
# the installer exactly as `python3 -m installer` would.
_BOOT = """
import socket, sys
sys.path.insert(0, {repo!r})
if {offline!r}:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("1.1.1.1", 53))
    except OSError:
        pass
    else:
        sys.exit("test harness: the network is reachable inside unshare -n")
if {no_crypto!r}:
    try:
        import cryptography
    except ImportError:
        pass
    else:
        sys.exit("test harness: cryptography is importable")
from installer.cli import run
sys.exit(run(sys.argv[1:]))
"""


def run_installed_appliance(prefix: Path, *args: str) -> str:
    """The current version's (fake) `appliance ARGS` on the prefix's data directory; its output."""
    done = subprocess.run(
        [str(prefix / "current" / "venv" / "bin" / "appliance"), *args],
        env={"APPLIANCE_HOME": str(prefix / "data")},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def run_installer(
    *args: str,
    no_crypto: bool = False,
    tmpdir: Path | None = None,
    source: Path = REPO,
    stdin: int | None = None,
    offline: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`python -m installer ARGS` (from the tree or an installer.pyz) in a fresh network namespace.

    `offline=False` runs it in this one: a service it starts must be reachable from the test (a fresh
    namespace's loopback is down, another namespace's is not ours). Its own egress tripwire still holds."""
    python = [sys.executable, "-I", "-S"] if no_crypto else [sys.executable]
    unshare = UNSHARE and offline
    boot = _BOOT.format(repo=str(source), offline=unshare, no_crypto=no_crypto)
    argv = [*(["unshare", "-n"] if unshare else []), *python, "-c", boot, *args]
    env = dict(os.environ)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, check=False, timeout=600, stdin=stdin
    )


def fake_wheel(
    folder: Path, version: int, revisions: tuple[str, ...] = ("0001",), serves: bool | str = False
) -> Path:
    """A tiny real wheel whose `appliance` script answers the installer's commands and `serve`.

    Like the real appliance it keeps a SQLite registry with an Alembic revision (`init` migrates to the last
    of `revisions` and refuses a revision it does not know), keys in that registry, and a `store.key`; it
    ships its revisions where the real one does (appliance/registry/migrations/versions/). With `serves`,
    `serve` listens where settings.toml's [server] says (or on the inherited socket of LISTEN_FDS), like the
    gateway: /health/ready and
    /v1/chat/completions for a key it created, until SIGTERM; `serves="broken"`: it exits at once (status
    1); else it prints its version and exits."""
    dist = f"fakeappliance-{version}.0"
    module = f'''"""Stands in for the appliance in installer tests."""
import json, os, pathlib, secrets, signal, sqlite3, sys, threading
REVISIONS = {list(revisions)!r}
def registry(home):
    db = sqlite3.connect(home / "registry.db")
    db.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS keys (name TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS secrets (secret TEXT NOT NULL)")
    return db
def serve(home):
    import http.server, tomllib
    settings = home / "settings.toml"
    server = tomllib.loads(settings.read_text()).get("server", {{}}) if settings.exists() else {{}}
    models = [line.split()[0] for line in (home / "registry.txt").read_text().splitlines() if line]
    class Gateway(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass
        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def authorized(self):
            presented = self.headers.get("Authorization", "").removeprefix("Bearer ")
            with registry(home) as db:
                return db.execute("SELECT 1 FROM secrets WHERE secret = ?", (presented,)).fetchone()
        def do_GET(self):
            if not self.authorized():
                return self.reply(401, {{"error": {{"message": "Incorrect API key provided."}}}})
            if self.path == "/health/ready":
                return self.reply(200, {{"status": "ready"}})
            self.reply(404, {{}})
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self.authorized():
                return self.reply(401, {{"error": {{"message": "Incorrect API key provided."}}}})
            if self.path != "/v1/chat/completions" or body.get("model") not in models:
                return self.reply(404, {{"error": {{"message": "no such model"}}}})
            message = {{"role": "assistant", "content": "hello from version {version}"}}
            self.reply(200, {{"model": body["model"], "choices": [{{"index": 0, "message": message}}]}})
    address = (server.get("host", "127.0.0.1"), server.get("port", 8080))
    if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
        import socket  # handed down as fd 3 (socket activation), like the gateway: bind nothing
        gateway = http.server.ThreadingHTTPServer(address, Gateway, bind_and_activate=False)
        gateway.socket.close()
        gateway.socket = socket.socket(fileno=3)
    else:
        gateway = http.server.ThreadingHTTPServer(address, Gateway)
    gateway.daemon_threads = False  # SIGTERM drains: requests in flight finish (server_close joins them)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=gateway.shutdown).start())
    print("serving version {version} on", address, flush=True)
    gateway.serve_forever()
    gateway.server_close()
def main():
    home = pathlib.Path(os.environ["APPLIANCE_HOME"])
    args = sys.argv[1:]
    if args[:1] == ["init"]:
        home.mkdir(parents=True, exist_ok=True)
        (home / "registry.txt").touch()
        key = home / "store.key"
        if not key.exists():
            key.write_text("00" * 32)
            key.chmod(0o600)
        with registry(home) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            if row is not None and row[0] not in REVISIONS:
                sys.exit(f"Can't locate revision identified by {{row[0]!r}}")
            db.execute("DELETE FROM alembic_version")
            db.execute("INSERT INTO alembic_version VALUES (?)", (REVISIONS[-1],))
    elif args[:2] == ["models", "list"]:
        print("NAME")
        print((home / "registry.txt").read_text(), end="")
    elif args[:2] == ["models", "add"]:
        with (home / "registry.txt").open("a") as out:
            out.write(args[args.index("--name") + 1] + " " + args[2] + "\\n")
    elif args[:2] == ["keys", "create"]:
        secret = "apl-" + secrets.token_urlsafe(16)
        with registry(home) as db:
            db.execute("INSERT INTO keys VALUES (?)", (args[args.index("--name") + 1],))
            db.execute("INSERT INTO secrets VALUES (?)", (secret,))
        print(secret if "--quiet" in args else secret + "\\n(shown once: copy it now)")
    elif args[:2] == ["keys", "list"]:
        with registry(home) as db:
            print("\\n".join(name for (name,) in db.execute("SELECT name FROM keys ORDER BY name")))
    elif args[:1] == ["serve"] and {serves!r} == "broken":
        sys.exit("version {version} is broken")
    elif args[:1] == ["serve"] and {serves!r}:
        serve(home)
    elif args[:1] == ["serve"]:
        print("serving version {version}")
    else:
        sys.exit(2)
'''  # noqa: S608 - the fake's source code, not a query
    metadata = f"Metadata-Version: 2.1\nName: fakeappliance\nVersion: {version}.0\n"
    files = {
        "fakeappliance.py": module.encode(),
        f"{dist}.dist-info/METADATA": metadata.encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}.dist-info/entry_points.txt": b"[console_scripts]\nappliance = fakeappliance:main\n",
    }
    for revision in revisions:
        migration = f"appliance/registry/migrations/versions/{revision}_fake.py"
        files[migration] = f'revision = "{revision}"\n'.encode()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"fakeappliance-{version}.0-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@dataclass
class Recipe:
    """What a test bundle holds; `files` maps bundle paths to (role, content)."""

    version: int = 1
    expires_in: int = 30 * DAY
    fake_app: bool = True
    revisions: tuple[str, ...] = ("0001",)
    serves: bool | str = False  # the fake's `serve` listens; "broken": exits at once (fake_wheel)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requirements: tuple[str, ...] = ()  # without the fake app: what pip installs from `files`' wheels


def make_bundle(work: Path, key: Path, recipe: Recipe, name: str = "b") -> Path:
    """Write a small signed bundle under `work` and return its path."""
    stage = work / f"{name}-src"
    sources: list[Source] = []
    requirements: tuple[str, ...] = recipe.requirements
    if recipe.fake_app:
        wheel = fake_wheel(stage / "wheels", recipe.version, recipe.revisions, recipe.serves)
        sources.append(Source(f"wheels/{wheel.name}", "wheel", wheel))
        requirements = ("fakeappliance",)
        model = b'{"name": "tiny", "aliases": ["default"], "file": "tiny.gguf", "format": "gguf"}'
        defaults = {
            "models/tiny/tiny.gguf": ("model", b"GGUF tiny " * 50),
            "models/tiny/registry.json": ("model", model),
        }
        recipe.files = {**defaults, **recipe.files}
    for path, (role, data) in recipe.files.items():
        file = stage / "files" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        sources.append(Source(path, role, file))
    now = int(time.time())
    created = min(now, now + recipe.expires_in - DAY)
    spec = BundleSpec(
        "appliance", "cpu", recipe.version, created, now + recipe.expires_in, HOST_TARGET, requirements
    )
    out = work / f"{name}.bundle"
    write_bundle(out, spec, sources, key, describe(sources))
    return out


def resign(bundle: Path, out: Path, key: Path, version: int, work: Path) -> Path:
    """The same members as `bundle` under another version number, signed again with `key`: the next
    version of a real bundle without a second build (its code is the same, its number is what an upgrade
    goes by)."""
    folder = work / f"resign-{version}"
    with tarfile.open(bundle) as archive:
        manifest_file = archive.extractfile(MANIFEST_NAME)
        assert manifest_file is not None
        manifest = parse_manifest(manifest_file.read(), Limits())
        for member in manifest.members:
            source = archive.extractfile(member.path)
            assert source is not None
            target = folder / member.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    sources = [Source(m.path, m.role, folder / m.path) for m in manifest.members]
    now = int(time.time())
    spec = BundleSpec(
        manifest.name,
        manifest.profile,
        version,
        now,
        manifest.expires,
        manifest.target,
        manifest.requirements,
    )
    write_bundle(out, spec, sources, key, describe(sources))
    return out


def rewrite(bundle: Path, out: Path, edit: object) -> Path:
    """Copy a bundle through tarfile, letting `edit(members)` change the list of (TarInfo, bytes)."""
    with tarfile.open(bundle) as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else b"") for m in archive.getmembers()]  # type: ignore[union-attr]
    members = edit(members)  # type: ignore[operator]
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under `root` with its content or link target, for byte-for-byte comparisons."""
    seen: dict[str, bytes | str] = {}
    if not root.exists():
        return seen
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            seen[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[rel] = path.read_bytes()
        else:
            seen[rel] = "dir"
    return seen
