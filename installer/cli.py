"""`python3 -m installer verify|install|start|stop|status|rollback|doctor|uninstall|trust`: for the admin."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from installer.crypto import Verifier, default_verifier, load_public_key
from installer.doctor import doctor
from installer.egress import AllowList, install_guard, stderr_audit
from installer.errors import (
    EgressRefusedError,
    InstallerError,
    InstallStepError,
    ReturnedError,
    ServiceError,
    StateError,
    UsageError,
)
from installer.install import Options, verify
from installer.limits import Limits
from installer.manifest import format_time
from installer.ready import DEFAULT_READY_TIMEOUT_S, curl_line
from installer.rootmeta import parse_root_document
from installer.start import Started, service_summary, start_serving, stop_serving
from installer.state import InstallState, Prefix
from installer.systemd import SERVICE_USER
from installer.trust import TrustedKeys, verify_root_update
from installer.uninstall import DEFAULT_UNIT_DIR, UninstallOptions, uninstall
from installer.upgrade import install_serving, rollback_serving

DEFAULT_PREFIX = Path("/opt/appliance")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="installer", description="Verify and install appliance bundles offline."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_prefix(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--prefix", type=Path, default=DEFAULT_PREFIX, help="install prefix (default %(default)s)"
        )
        return sub

    for name in ("verify", "install"):
        sub = with_prefix(commands.add_parser(name, help=f"{name} a bundle"))
        sub.add_argument("bundle", type=Path)
        sub.add_argument(
            "--trust", type=Path, action="append", default=[], help="first install: a public key to pin"
        )
        sub.add_argument(
            "--allow-downgrade", action="store_true", help="accept a version not higher (audited)"
        )
    install_cmd = commands.choices["install"]
    install_cmd.add_argument("--python", help="interpreter for the appliance's venv (must match the bundle)")
    install_cmd.add_argument("--systemd", action="store_true", help="write and check a hardened unit")
    install_cmd.add_argument(
        "--start",
        action="store_true",
        help="then serve: create the admin key once, start the service, wait until it is ready",
    )
    install_cmd.add_argument("--allow-ip", action="append", default=[], help="CIDR clients may come from")
    install_cmd.add_argument(
        "--service-user",
        default=SERVICE_USER,
        help="with --systemd: the unprivileged user the service runs as, created if missing (%(default)s)",
    )
    start = with_prefix(commands.add_parser("start", help="serve the current version (as install --start)"))
    stop = with_prefix(commands.add_parser("stop", help="stop serving (SIGTERM, SIGKILL after a bound)"))
    status = with_prefix(
        commands.add_parser("status", help="installed versions, current, keys, service, last outcome")
    )
    status.add_argument("--json", action="store_true")
    back = with_prefix(commands.add_parser("rollback", help="make the previous version current"))
    for sub in (install_cmd, start, stop, status, back):
        sub.add_argument(
            "--unit-dir",
            type=Path,
            default=DEFAULT_UNIT_DIR,
            help="where the --systemd unit is written (and looked for when systemd runs the host)",
        )
    for sub in (install_cmd, start, back):
        sub.add_argument(
            "--ready-timeout",
            type=float,
            default=DEFAULT_READY_TIMEOUT_S,
            help="seconds to wait for /health/ready (default %(default)s)",
        )
    back.add_argument(
        "--restore-data",
        action="store_true",
        help="also put back the registry as it was when that version was upgraded (needed when its code "
        "does not know the data's schema; what was created since is lost)",
    )
    # uninstall and doctor (installer/uninstall.py, installer/doctor.py)
    gone = with_prefix(
        commands.add_parser("uninstall", help="stop the service; remove versions, unit, state")
    )
    gone.add_argument("--keep-data", action="store_true", help="leave PREFIX/data (keys, registry, store)")
    gone.add_argument("--yes", action="store_true", help="remove the data without asking")
    doctor_cmd = with_prefix(commands.add_parser("doctor", help="check files, link, unit, ownership, modes"))
    for sub in (gone, doctor_cmd):
        sub.add_argument("--unit-dir", type=Path, default=DEFAULT_UNIT_DIR)
    trust = commands.add_parser("trust", help="list keys, apply a root update, pin or revoke signing keys")
    trust_commands = trust.add_subparsers(dest="trust_command", required=True)
    with_prefix(trust_commands.add_parser("list", help="root keys, threshold, signing keys, revoked"))
    update = with_prefix(trust_commands.add_parser("update", help="apply root documents, in version order"))
    update.add_argument("root", type=Path, nargs="+")
    with_prefix(trust_commands.add_parser("add", help="pin a key (pinned mode only)")).add_argument(
        "key", type=Path
    )
    with_prefix(trust_commands.add_parser("revoke", help="revoke a signing key here")).add_argument("key_id")
    return parser


def _status(prefix: Prefix, as_json: bool, unit_dir: Path) -> None:
    state = prefix.load()
    current = prefix.current()
    service = service_summary(prefix, unit_dir)
    if as_json:
        document = json.loads(state.to_bytes())
        document["current"] = current
        document["service"] = service
        print(json.dumps(document, indent=2, sort_keys=True))
        return
    print(f"prefix:  {prefix.root}\ncurrent: {current if current is not None else 'none'}")
    if service["state"] == "running":
        url = f" at {service['url']}" if "url" in service else ""
        print(
            f"service: running ({service['mode']}), pid {service['pid']}, "
            f"version {service['version'] if service['version'] is not None else 'unknown'}, "
            f"{service['health']}{url}"
        )
    else:
        print(f"service: stopped ({service['mode']})")
    for v in sorted(state.installed, key=lambda v: v.version):
        mark = "*" if v.version == current else " "
        print(
            f" {mark} version {v.version}  {v.profile}  "
            f"installed {format_time(v.installed_at)}  key {v.key_id[:16]}"
        )
    _print_trust(state.trust)
    last = state.history[-1] if state.history else None
    outcome = (
        f"{last['action']} {last['outcome']}: {last['detail']} at {format_time(last['at'])}"
        if last
        else "none"
    )
    print(f"last outcome: {outcome}")


def _print_trust(trust: TrustedKeys) -> None:
    mode = "pinned keys, each a 1-of-1 root" if trust.root is None else "root document"
    print(f"trust version {trust.version} ({mode}), threshold {trust.threshold}:")
    if trust.root is not None:
        for key in trust.root_keys.values():
            print(f"   root    {key.fingerprint}")
    for key in trust.keys.values():
        print(f"   signing {key.fingerprint}")
    for key_id in sorted(trust.revoked):
        print(f"   revoked {key_id}")


def _trust_update(state: InstallState, files: list[Path], verifier: Verifier) -> None:
    """Apply root documents in order; any refusal leaves the state as it was (nothing is saved)."""
    trust = state.trust
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {path}: {error.strerror}") from None
        document = parse_root_document(data, Limits().max_trust_file_bytes)
        trust = trust.rotated(verify_root_update(trust, document, verifier, now=int(time.time())))
        _say(f"trust is now root version {trust.version}")
    state.trust = trust
    state.record("trust.update", "success", f"root version {trust.version}")


def _trust(prefix: Prefix, args: argparse.Namespace) -> None:
    if not prefix.exists():
        raise StateError(f"no install state in {prefix.root}: pin keys with the first install's --trust")
    with prefix.locked():
        state = prefix.load()
        if args.trust_command == "update":
            _trust_update(state, args.root, default_verifier())
        elif args.trust_command == "add":
            if state.trust.root is not None:
                raise UsageError(
                    f"trust is governed by root version {state.trust.version}: a signing key is added "
                    "by a root update signed by the root keys (`trust update ROOT.json`)"
                )
            key = load_public_key(args.key.read_text())
            if key.key_id in state.trust.revoked:
                raise UsageError(f"key {key.key_id[:16]} is revoked and cannot be trusted again")
            state.trust = state.trust.with_keys([key])
            state.record("trust.add", "success", key.key_id)
            _say(f"trusting key {key.fingerprint}")
        elif args.trust_command == "revoke":
            if args.key_id not in state.trust.keys:
                raise UsageError(f"no trusted signing key has id {args.key_id}")
            if len(state.trust.keys) == 1:
                raise UsageError("refusing to revoke the last trusted key: pin its successor first")
            state.trust = state.trust.with_revoked(args.key_id)
            state.record("trust.revoke", "success", args.key_id)
            _say(f"revoked key {args.key_id}")
        else:
            _print_trust(state.trust)
            return
        prefix.save(state)


def _served(started: Started) -> None:
    """What the admin needs next, on stdout: the key once, the URL, and a request to paste."""
    if started.new_key is not None:
        print(f"admin key (shown once; kept in {started.key_file}): {started.new_key}")
    else:
        print(f"admin key: {started.key_file}")
    print(f"{started.state}: {started.endpoint.url}")
    print(curl_line(started.endpoint, started.key_file, started.model))


def run(argv: Sequence[str]) -> int:
    """Run one command; an InstallerError becomes one line on stderr and its class's exit code."""
    # The tripwire first: an offline install never needs the network, so any attempt is a bug to stop.
    install_guard(AllowList(), stderr_audit("installer"), EgressRefusedError)
    args = _parser().parse_args(argv)
    try:
        if args.command in ("verify", "install"):
            options = Options(
                bundle=args.bundle,
                prefix=args.prefix,
                trust_files=tuple(args.trust),
                allow_downgrade=args.allow_downgrade,
                python=getattr(args, "python", None),
                unit_dir=args.unit_dir if getattr(args, "systemd", False) else None,
                allow_ips=tuple(getattr(args, "allow_ip", ())),
                service_user=getattr(args, "service_user", SERVICE_USER),
            )
            verifier = default_verifier()
            if args.command == "verify":
                started = time.monotonic()
                manifest = verify(options, verifier, _say).manifest
                _say(f"verified with {verifier.name} in {time.monotonic() - started:.1f}s")
                print(f"verify: ok: {manifest.name} {manifest.profile} version {manifest.version}")
            else:
                manifest, served = install_serving(
                    options, verifier, args.unit_dir, args.start, args.ready_timeout, _say
                )
                print(f"install: ok: {manifest.name} {manifest.profile} version {manifest.version}")
                if served is not None:
                    _served(served)
        elif args.command == "start":
            _served(start_serving(Prefix(args.prefix.absolute()), args.unit_dir, args.ready_timeout, _say))
        elif args.command == "stop":
            stopped = stop_serving(Prefix(args.prefix.absolute()), args.unit_dir, _say)
            print("stopped" if stopped else "not running")
        elif args.command == "status":
            _status(Prefix(args.prefix.absolute()), args.json, args.unit_dir)
        elif args.command == "rollback":
            served = rollback_serving(args.prefix, args.unit_dir, args.restore_data, args.ready_timeout, _say)
            if served is not None:
                _served(served)
        elif args.command == "uninstall":
            uninstall(UninstallOptions(args.prefix, args.keep_data, args.yes, args.unit_dir), print)
        elif args.command == "doctor":
            return 0 if doctor(args.prefix, args.unit_dir, print) else 1
        else:
            _trust(Prefix(args.prefix), args)
    except ReturnedError as error:
        _say(error.message)  # the whole line: which version failed, and that the previous one serves
        return error.exit_code
    except InstallerError as error:
        kind = "failed" if isinstance(error, (InstallStepError, ServiceError, StateError)) else "refused"
        _say(f"installer: {kind}: {error.message}")
        return error.exit_code
    return 0


def main() -> None:
    """Console entry."""
    sys.exit(run(sys.argv[1:]))
