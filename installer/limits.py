"""Explicit, named limits on what the installer reads (modelled on python-tuf's UpdaterConfig)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Limits:
    """Upper bounds that keep a hostile file from exhausting memory, disk or time."""

    max_manifest_bytes: int = 1 * MIB  # a manifest of 10,000 members is about 2 MB; ours are ~20 KB
    max_trust_file_bytes: int = 64 * KIB  # a handful of PEM public keys and revocations
    max_members: int = 10_000  # vllm's wheel set is a few hundred files
    max_member_bytes: int = 64 * GIB  # one weights shard
    max_total_bytes: int = 512 * GIB  # the whole bundle
    max_path_bytes: int = 240  # ustar splits names into 155 + 100 bytes; leave room for the prefix
    chunk_bytes: int = 1 * MIB  # read size while hashing and copying


DEFAULT_LIMITS = Limits()
