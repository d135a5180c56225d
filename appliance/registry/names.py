"""The one rule for names that become file and socket names: model names and their versions.

A model's name and version end up in `run/<name>@<version>.<n>.sock`, in the memfd and tmpfs folder names
of the store, and in the default file name of an export, so neither may hold a `/`, a `..`, a control
character, markup or anything a shell or a file system reads specially.
"""

from __future__ import annotations

from appliance.errors import InvalidRequestError

MAX_CHARS = 32
"""A unix socket path holds at most 107 bytes: the run folder, a name, a version and `.<n>.sock` must fit."""
EXTRA_CHARS = frozenset("._-")
RULE = f"use 1 to {MAX_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_file_name_safe(value: str) -> bool:
    """Whether `value` may be a model name or version (ASCII only: no look-alike Unicode either)."""
    if not 0 < len(value) <= MAX_CHARS or not value.isascii():
        return False
    # A leading '.' or '-' would make a hidden file or read as a command-line option.
    return value[0].isalnum() and all(c.isalnum() or c in EXTRA_CHARS for c in value)


def check_model_name(name: str) -> None:
    """Refuse a model name that could not be a file name (InvalidRequestError, param `name`)."""
    if not is_file_name_safe(name):
        raise InvalidRequestError(f"model name {name!r}: {RULE}", param="name")


def check_version(version: str) -> None:
    """Refuse a version that could not be part of a file name (InvalidRequestError, param `version`)."""
    if not is_file_name_safe(version):
        raise InvalidRequestError(f"version {version!r}: {RULE}", param="version")
