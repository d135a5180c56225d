"""Writing and signing root documents (the offline side; needs `cryptography`, like pack.py).

The flow for a trust change (see installer/README.md): one person writes the unsigned next version with
`trust new`; the file goes from holder to holder (USB, offline), each running `trust sign` with their root
key, and every key the version introduces signs it too; `trust check` says what is still missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from installer.crypto import CryptographyVerifier, load_public_key
from installer.errors import InstallerError
from installer.limits import Limits
from installer.pack import public_key_of, sign
from installer.rootmeta import Root, SignedRoot, is_public_key_pem, parse_root_document, parse_root_obj
from installer.trust import TrustedKeys, TrustUpdate, bootstrap_root, verify_root_update

DAY = 86_400


def new_root(
    version: int,
    root_keys: list[Path],
    threshold: int,
    signing_keys: list[Path],
    revoked: list[str],
    expires_days: int | None,
) -> SignedRoot:
    """An unsigned root document, validated by the installer's own parser."""
    expires = int(time.time()) + expires_days * DAY if expires_days else None
    root = Root(
        version,
        expires,
        threshold,
        tuple(load_public_key(p.read_text()) for p in root_keys),
        tuple(load_public_key(p.read_text()) for p in signing_keys),
        frozenset(revoked),
    )
    return parse_root_obj(SignedRoot(root).to_obj())


def sign_root(document: SignedRoot, private: Path) -> SignedRoot:
    """The document with `private`'s signature over its canonical bytes added."""
    key = public_key_of(private)
    return document.with_signature(key.key_id, sign(private, document.root.message()))


def check_root(document: SignedRoot, current: TrustedKeys | None) -> str:
    """Whether the installer would accept the document after `current` (None: as a first install's root)."""
    verifier, now = CryptographyVerifier(), int(time.time())
    try:
        if current is None:
            bootstrap_root(document, verifier, now=now)
        else:
            verify_root_update(current, document, verifier, now=now)
    except InstallerError as error:
        return f"not yet acceptable: {error.message}"
    return "acceptable"


def _current(path: Path) -> TrustedKeys:
    """The trust a document follows: a root document, or a pinned public key (version 0)."""
    data = path.read_bytes()
    if is_public_key_pem(data):
        return TrustedKeys().with_keys([load_public_key(data.decode("ascii", "replace"))])
    return TrustedKeys().rotated(TrustUpdate(_read(path)))


def _read(path: Path) -> SignedRoot:
    return parse_root_document(path.read_bytes(), Limits().max_trust_file_bytes)


def _describe(document: SignedRoot) -> None:
    root = document.root
    print(f"root version {root.version}, threshold {root.threshold} of {len(root.root_keys)}")
    for key in root.root_keys:
        print(f"  root     {key.fingerprint}")
    for key in root.signing_keys:
        print(f"  signing  {key.fingerprint}")
    for key_id in sorted(root.revoked):
        print(f"  revokes  {key_id}")
    print(f"  signed by {len(document.signatures)} key(s)")


def command(args: argparse.Namespace) -> None:
    """`trust new|sign|check`, from `python -m installer.build trust ...`."""
    try:
        if args.trust_command == "new":
            document = new_root(
                args.version, args.root_key, args.threshold, args.signing_key, args.revoke, args.expires_days
            )
            if args.out.exists():
                raise SystemExit(f"trust new: {args.out} exists; pick another --out")
            args.out.write_bytes(document.to_bytes())
        elif args.trust_command == "sign":
            document = _read(args.file)
            for key in args.key:
                document = sign_root(document, key)
                print(f"signed with {public_key_of(key).fingerprint}")
            args.file.write_bytes(document.to_bytes())
        else:
            document = _read(args.file)
            current = _current(args.current) if args.current is not None else None
            _describe(document)
            print(check_root(document, current))
            return
    except InstallerError as error:
        raise SystemExit(f"trust {args.trust_command}: {error.message}") from None
    _describe(document)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `trust` subcommands of `installer.build`."""
    trust = commands.add_parser("trust", help="write, sign and check root documents (trust changes)")
    sub = trust.add_subparsers(dest="trust_command", required=True)
    new = sub.add_parser("new", help="write the next root version, unsigned")
    new.add_argument("--version", type=int, required=True, help="the installed root version + 1")
    new.add_argument("--root-key", type=Path, action="append", required=True, help="a root public key")
    new.add_argument("--threshold", type=int, required=True, help="root signatures a change needs")
    new.add_argument("--signing-key", type=Path, action="append", required=True, help="a bundle key")
    new.add_argument("--revoke", action="append", default=[], help="a key id to revoke for good")
    new.add_argument("--expires-days", type=int, help="refuse to apply it after this many days")
    new.add_argument("--out", type=Path, required=True)
    signer = sub.add_parser("sign", help="add signatures (root keys, and every key the version adds)")
    signer.add_argument("file", type=Path)
    signer.add_argument("--key", type=Path, action="append", required=True, help="a private key file")
    check = sub.add_parser("check", help="say whether the installer would accept the document")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--current", type=Path, help="the root document or pinned KEY.pub it follows (none: a first root)"
    )
