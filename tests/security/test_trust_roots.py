"""Issue 17 item 10: only a threshold of offline root keys changes the trusted set (TUF's root role).

Before: a bundle signed by any trusted key could carry `trust/keys.json`, replace every key and revoke the
vendor's for good. Now a trust change is a root document: version exactly current + 1, signed by a
threshold of the current root keys and of its own, and by every key it introduces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from installer import errors
from installer.bundlefile import read_bundle
from installer.crypto import CryptographyVerifier, PublicKey, Verifier, find_openssl, load_public_key
from installer.limits import Limits
from installer.pack import generate_key_pair
from installer.rootmeta import SignedRoot, parse_root_document
from installer.rootsign import new_root, sign_root
from installer.state import InstalledVersion, InstallState, Prefix
from installer.trust import TrustedKeys, bootstrap_root, pin_trust_files, verify_root_update
from tests.installer.helpers import Recipe, make_bundle, run_installer, snapshot

Keys = dict[str, tuple[Path, Path]]
VERIFIER = CryptographyVerifier()
NAMES = ("r1", "r2", "r3", "r4", "r5", "s1", "s2", "x", "pinned")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Root keys r1..r5, signing keys s1 and s2, the attacker's x, and a pinned key (the simple case)."""
    folder = tmp_path_factory.mktemp("root-keys")
    return {name: generate_key_pair(folder, name) for name in NAMES}


def _pub(keys: Keys, name: str) -> PublicKey:
    return load_public_key(keys[name][1].read_text())


def _doc(
    keys: Keys,
    version: int,
    roots: tuple[str, ...],
    threshold: int,
    signing: tuple[str, ...],
    signers: tuple[str, ...],
    revoke: tuple[str, ...] = (),
    expires_days: int | None = None,
) -> SignedRoot:
    document = new_root(
        version,
        [keys[n][1] for n in roots],
        threshold,
        [keys[n][1] for n in signing],
        [_pub(keys, n).key_id for n in revoke],
        expires_days,
    )
    for name in signers:
        document = sign_root(document, keys[name][0])
    # Through the file form and back, as the installer receives it.
    return parse_root_document(document.to_bytes(), Limits().max_trust_file_bytes)


@pytest.fixture
def v1(keys: Keys) -> TrustedKeys:
    """Root version 1: r1, r2, r3 with a threshold of 2; s1 signs bundles."""
    document = _doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "r2", "r3", "s1"))
    return bootstrap_root(document, VERIFIER, now=int(time.time()))


def _update(trust: TrustedKeys, document: SignedRoot, verifier: Verifier = VERIFIER) -> TrustedKeys:
    return trust.rotated(verify_root_update(trust, document, verifier, now=int(time.time())))


def _read(bundle: Path, trust: TrustedKeys) -> TrustedKeys:
    verified = read_bundle(
        bundle,
        trust,
        now=int(time.time()),
        installed_version=None,
        allow_downgrade=False,
        verifier=VERIFIER,
        limits=Limits(),
    )
    return trust if verified.trust_update is None else trust.rotated(verified.trust_update)


def test_a_compromised_signing_key_cannot_change_the_trusted_set(v1: TrustedKeys, keys: Keys) -> None:
    """s1 stolen: a root update signed by s1 and the attacker's key (new signer, new root) is refused."""
    takeovers = [
        _doc(keys, 2, ("r1", "r2", "r3"), 2, ("x",), ("s1", "x"), revoke=("s1",)),
        _doc(keys, 2, ("x",), 1, ("s1",), ("s1", "x")),
    ]
    for document in takeovers:
        with pytest.raises(errors.SignatureError, match="signed by 0 of the current root keys"):
            _update(v1, document)


def test_a_signing_key_cannot_carry_a_trust_change_in_a_bundle(
    v1: TrustedKeys, keys: Keys, tmp_path: Path
) -> None:
    """The manifest's signature covers trust/root.json, but that is not a root signature: refused.
    The old trusted-keys file is no bundle member any more, whoever signed the bundle."""
    takeover = _doc(keys, 2, ("x",), 1, ("s2",), ("s1", "x", "s2"), revoke=("s1",))
    files = {"trust/root.json": ("trust", takeover.to_bytes())}
    bundle = make_bundle(tmp_path, keys["s1"][0], Recipe(version=2, fake_app=False, files=files), "take")
    with pytest.raises(errors.SignatureError, match="of the current root keys"):
        _read(bundle, v1)
    legacy = json.dumps({"version": 9, "keys": [_pub(keys, "x").pem()], "revoked": []}).encode()
    files = {"trust/keys.json": ("trust", legacy)}
    bundle = make_bundle(tmp_path, keys["s1"][0], Recipe(version=2, fake_app=False, files=files), "old")
    with pytest.raises(errors.BundleFormatError, match=r"the only trust member is trust/root\.json"):
        _read(bundle, v1)


def test_below_the_threshold_is_refused(v1: TrustedKeys, keys: Keys) -> None:
    """One of the three root keys (threshold 2) is not enough, even with every new key's signature."""
    document = _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "s2"), revoke=("s1",))
    with pytest.raises(errors.SignatureError, match=r"signed by 1 of the current root keys.*needs 2"):
        _update(v1, document)
    forged = SignedRoot(document.root, (*document.signatures, (_pub(keys, "r2").key_id, bytes(64))))
    with pytest.raises(errors.SignatureError, match="signed by 1 of the current root keys"):
        _update(v1, forged)  # a bad signature under a root key's name counts for nothing


def test_a_new_root_needs_its_own_threshold(v1: TrustedKeys, keys: Keys) -> None:
    """Rotating to r4, r5 (threshold 2): the old quorum and only one new root key is refused."""
    document = _doc(keys, 2, ("r4", "r5"), 2, ("s1",), ("r1", "r2", "r4"))
    with pytest.raises(errors.SignatureError, match="signed by 1 of its own root keys; its threshold is 2"):
        _update(v1, document)


@pytest.mark.parametrize(
    ("roots", "signing", "signers", "missing"),
    [
        (("r1", "r2", "r3"), ("s1", "s2"), ("r1", "r2"), "s2"),  # a new signing key
        (("r1", "r2", "r4"), ("s1",), ("r1", "r2"), "r4"),  # a new root key (threshold met without it)
    ],
)
def test_a_new_key_must_sign_its_introduction(
    v1: TrustedKeys,
    keys: Keys,
    roots: tuple[str, ...],
    signing: tuple[str, ...],
    signers: tuple[str, ...],
    missing: str,
) -> None:
    """Proof of possession: a key nobody showed to be held is never trusted on the root keys' word."""
    document = _doc(keys, 2, roots, 2, signing, signers)
    with pytest.raises(errors.SignatureError, match=f"introduces key {_pub(keys, missing).key_id[:16]}"):
        _update(v1, document)


def test_rollback_replay_and_skipped_versions_are_refused(
    v1: TrustedKeys, keys: Keys, tmp_path: Path
) -> None:
    """A version must be exactly current + 1; an applied one replayed in a bundle changes nothing."""
    v2_doc = _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2", "s2"), revoke=("s1",))
    v2 = _update(v1, v2_doc)
    with pytest.raises(errors.DowngradeError, match="not newer than the trusted version 2"):
        _update(v2, v2_doc)
    old = _doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "r2", "r3", "s1"))
    with pytest.raises(errors.DowngradeError, match="not newer"):
        _update(v2, old)
    jump = _doc(keys, 4, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2", "r3"))
    with pytest.raises(errors.DowngradeError, match="skips version 3"):
        _update(v2, jump)
    files = {"trust/root.json": ("trust", v2_doc.to_bytes())}
    bundle = make_bundle(tmp_path, keys["s2"][0], Recipe(version=3, fake_app=False, files=files))
    assert _read(bundle, v2) == v2


def test_a_listed_revoked_key_and_an_expired_root_are_refused(v1: TrustedKeys, keys: Keys) -> None:
    """Revocation is for good, even for the root keys; a root past its expiry is not applied."""
    v2 = _update(v1, _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2", "s2"), revoke=("s1",)))
    back = _doc(keys, 3, ("r1", "r2", "r3"), 2, ("s1", "s2"), ("r1", "r2", "s1"))
    with pytest.raises(errors.RevokedKeyError, match="which is revoked"):
        _update(v2, back)
    expired = _doc(keys, 3, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2"), expires_days=1)
    with pytest.raises(errors.ExpiredError, match="expired"):
        verify_root_update(v2, expired, VERIFIER, now=int(time.time()) + 2 * 86_400)


def test_a_valid_update_moves_bundle_trust(v1: TrustedKeys, keys: Keys, tmp_path: Path) -> None:
    """r1 + r2 (and s2 for itself) add s2 and revoke s1: s2's bundles verify, s1's are refused."""
    document = _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2", "s2"), revoke=("s1",))
    files = {"trust/root.json": ("trust", document.to_bytes())}
    carrier = make_bundle(tmp_path, keys["s1"][0], Recipe(version=2, fake_app=False, files=files), "c")
    v2 = _read(carrier, v1)
    assert v2.version == 2
    assert set(v2.keys) == {_pub(keys, "s2").key_id}
    assert _pub(keys, "s1").key_id in v2.revoked
    assert TrustedKeys.from_json(json.loads(json.dumps(v2.to_json()))) == v2
    _read(make_bundle(tmp_path, keys["s2"][0], Recipe(version=3, fake_app=False), "by-s2"), v2)
    with pytest.raises(errors.RevokedKeyError, match="revoked key"):
        _read(make_bundle(tmp_path, keys["s1"][0], Recipe(version=3, fake_app=False), "by-s1"), v2)


def test_the_openssl_path_checks_root_signatures_too(v1: TrustedKeys, keys: Keys) -> None:
    """A host without `cryptography` applies the same rules through openssl 3."""
    openssl = find_openssl()
    assert openssl is not None
    good = _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s1", "s2"), ("r2", "r3", "s2"))
    assert _update(v1, good, openssl).version == 2
    with pytest.raises(errors.SignatureError, match="signed by 1 of the current root keys"):
        _update(v1, _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s1", "s2"), ("r3", "s2")), openssl)


def test_pinned_key_is_a_one_of_one_root_until_a_root_takes_over(keys: Keys, tmp_path: Path) -> None:
    """The simple case: a pinned key signs the move to offline roots; afterwards it cannot change trust."""
    pinned = pin_trust_files([keys["pinned"][1]])
    assert pinned.threshold == 1
    assert set(pinned.root_keys) == set(pinned.keys) == {_pub(keys, "pinned").key_id}
    with pytest.raises(errors.SignatureError, match="signed by 0 of the current root keys"):
        _update(pinned, _doc(keys, 1, ("x",), 1, ("s2",), ("x", "s2")))
    handover = _doc(keys, 1, ("r1", "r2", "r3"), 2, ("pinned",), ("pinned", "r1", "r2", "r3"))
    rooted = _update(pinned, handover)
    assert rooted.usable(_pub(keys, "pinned").key_id) is not None  # still signs bundles
    with pytest.raises(errors.SignatureError, match="signed by 0 of the current root keys"):
        _update(rooted, _doc(keys, 2, ("r1", "r2", "r3"), 2, ("x",), ("pinned", "x"), revoke=("pinned",)))
    root_file = tmp_path / "root.json"
    root_file.write_bytes(handover.to_bytes())
    assert pin_trust_files([root_file], VERIFIER).root_keys == rooted.root_keys
    with pytest.raises(errors.UsageError, match="either public keys or one root document"):
        pin_trust_files([keys["pinned"][1], root_file], VERIFIER)
    with pytest.raises(errors.UsageError, match="not a public key"):
        pin_trust_files([keys["pinned"][0]], VERIFIER)


@pytest.mark.parametrize(
    ("roots", "threshold", "signing", "reason"),
    [
        (("r1", "r2"), 3, ("s1",), "threshold 3 is more than its 2 root keys"),
        (("r1", "s1"), 1, ("s1",), "both a root key and a signing key"),
    ],
)
def test_an_inconsistent_root_is_a_format_refusal(
    keys: Keys, roots: tuple[str, ...], threshold: int, signing: tuple[str, ...], reason: str
) -> None:
    """Root keys stay apart from signing keys, and a threshold must be reachable."""
    with pytest.raises(errors.BundleFormatError, match=reason):
        _doc(keys, 1, roots, threshold, signing, ())


def _rooted_prefix(tmp_path: Path, keys: Keys) -> Path:
    """A prefix whose state holds root version 1 (r1..r3, threshold 2, signing key s1)."""
    prefix = Prefix(tmp_path / "prefix")
    document = _doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "r2", "r3", "s1"))
    trust = bootstrap_root(document, VERIFIER, now=int(time.time()))
    prefix.save(InstallState(trust, [InstalledVersion(1, "cpu", "0" * 64, 0)]))
    return prefix.root


def test_the_cli_refuses_in_one_line_and_writes_nothing(keys: Keys, tmp_path: Path) -> None:
    """`trust update` with a takeover, a short quorum or a missing proof: one line, exit code, no write;
    `trust add` is refused once a root governs; a good chain of versions is applied in order."""
    prefix = _rooted_prefix(tmp_path, keys)
    bad = {
        "takeover": (_doc(keys, 2, ("x",), 1, ("s1",), ("s1", "x")), errors.SignatureError),
        "short": (_doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "s2")), errors.SignatureError),
        "proof": (_doc(keys, 2, ("r1", "r2", "r3"), 2, ("s2",), ("r1", "r2")), errors.SignatureError),
        "replay": (
            _doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "r2", "r3", "s1")),
            errors.DowngradeError,
        ),
    }
    assert run_installer("trust", "list", "--prefix", str(prefix)).returncode == 0  # creates .lock
    before = snapshot(prefix)
    for name, (document, error) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(document.to_bytes())
        done = run_installer("trust", "update", str(path), "--prefix", str(prefix))
        assert done.returncode == error.exit_code, (name, done.stderr)
        assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
        assert done.stderr.startswith("installer: refused: root version"), done.stderr
        assert snapshot(prefix) == before, name
    done = run_installer("trust", "add", str(keys["x"][1]), "--prefix", str(prefix))
    assert done.returncode == errors.UsageError.exit_code
    assert "governed by root version 1" in done.stderr
    assert snapshot(prefix) == before
    chain = [
        _doc(keys, 2, ("r1", "r2", "r3"), 2, ("s1", "s2"), ("r1", "r2", "s2")),
        _doc(keys, 3, ("r4", "r5"), 1, ("s2",), ("r1", "r3", "r4", "r5"), revoke=("s1", "r1")),
    ]
    paths = []
    for document in chain:
        paths.append(tmp_path / f"root-{document.root.version}.json")
        paths[-1].write_bytes(document.to_bytes())
    done = run_installer("trust", "update", *map(str, paths), "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    trust = Prefix(prefix).load().trust
    assert (trust.version, trust.threshold) == (3, 1)
    assert set(trust.root_keys) == {_pub(keys, n).key_id for n in ("r4", "r5")}
    assert set(trust.keys) == {_pub(keys, "s2").key_id}
    listed = run_installer("trust", "list", "--prefix", str(prefix))
    assert f"root    {_pub(keys, 'r4').fingerprint}" in listed.stdout
    assert f"revoked {_pub(keys, 's1').key_id}" in listed.stdout


def test_verify_with_a_root_document_as_the_first_trust(keys: Keys, tmp_path: Path) -> None:
    """`verify --trust root.json`: the root keys' fingerprints are shown, the signing key's bundle passes,
    and a root that its own keys did not sign is refused before any bundle is read."""
    good = tmp_path / "root.json"
    good.write_bytes(_doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "r2", "r3", "s1")).to_bytes())
    bundle = make_bundle(tmp_path, keys["s1"][0], Recipe(version=1, fake_app=False))
    done = run_installer("verify", str(bundle), "--prefix", str(tmp_path / "p"), "--trust", str(good))
    assert done.returncode == 0, done.stderr
    assert _pub(keys, "r2").fingerprint in done.stderr
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_bytes(_doc(keys, 1, ("r1", "r2", "r3"), 2, ("s1",), ("r1", "s1")).to_bytes())
    done = run_installer("verify", str(bundle), "--prefix", str(tmp_path / "p"), "--trust", str(unsigned))
    assert done.returncode == errors.SignatureError.exit_code, done.stderr
    assert "signed by 1 of its own root keys" in done.stderr
    assert not (tmp_path / "p").exists()
