"""One error hierarchy for the installer; each class of failure has its own exit code."""

from __future__ import annotations


class InstallerError(Exception):
    """Base of every installer failure: one line of text and an exit code for its class."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(InstallerError):
    """The command line or the admin's choices do not make sense together."""

    exit_code = 2


class BundleFormatError(InstallerError):
    """The file is not a well-formed bundle (tar structure, manifest syntax or schema)."""

    exit_code = 10


class LimitError(InstallerError):
    """Something in the bundle is larger than the installer's explicit limits allow."""

    exit_code = 11


class UnsafeMemberError(InstallerError):
    """A member is a link, a device, a directory or has an absolute or `..` path."""

    exit_code = 12


class SignatureError(InstallerError):
    """The manifest's signature does not verify."""

    exit_code = 20


class UntrustedKeyError(SignatureError):
    """The manifest names a signing key that is not pinned in the install state."""

    exit_code = 21


class RevokedKeyError(SignatureError):
    """The manifest was signed by a key that has been revoked."""

    exit_code = 22


class ExpiredError(InstallerError):
    """The manifest's expiry time has passed."""

    exit_code = 23


class DowngradeError(InstallerError):
    """The bundle's version is not higher than the installed one."""

    exit_code = 24


class MemberError(InstallerError):
    """A member is missing, extra, duplicated, or differs in size or sha256 from the manifest."""

    exit_code = 30


class TargetError(InstallerError):
    """The bundle was built for another Python or platform than this host offers."""

    exit_code = 40


class StateError(InstallerError):
    """The install state is unreadable, inconsistent, or locked by another installer."""

    exit_code = 50


class InstallStepError(InstallerError):
    """A step of the install (venv, pip, models, migrations, unit) failed; the previous version stays."""

    exit_code = 60


class ServiceError(InstallerError):
    """The installed appliance did not start, did not become ready in time, or would not stop."""

    exit_code = 61


class NotReadyError(ServiceError):
    """The appliance ended or stayed unready: `reason` in a few words, `log` where its output went."""

    def __init__(self, reason: str, log: str) -> None:
        super().__init__(f"the appliance {reason}; see {log}")
        self.reason, self.log = reason, log


class ReturnedError(ServiceError):
    """An upgrade's new version did not become ready and `current` went back to the previous one; the
    message is the whole line the admin sees."""


class CryptoUnavailableError(InstallerError):
    """Neither the `cryptography` package nor an Ed25519-capable `openssl` is available on the host."""

    exit_code = 70


class EgressRefusedError(InstallerError):
    """The installer tried to reach the network; the egress guard (installer/egress.py) refused."""

    exit_code = 80
