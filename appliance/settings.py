"""Typed settings, read once at start from `APPLIANCE_HOME/settings.toml` and passed down."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from appliance.errors import SettingsError

SETTINGS_FILE = "settings.toml"
DEFAULT_HOME = Path("/var/lib/appliance")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the gateway listens. Loopback by default: exposing it is an explicit choice."""

    host: str = "127.0.0.1"
    port: int = 8080


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Request limits the gateway enforces before any engine sees the request."""

    max_body_bytes: int = 1_048_576
    """Largest request body accepted; larger bodies get 413."""
    request_timeout_s: float = 600.0
    """Longest a single request may wait on its engine."""


class WorkerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How llama.cpp worker processes are started and supervised."""

    threads: int = 0
    """Generation threads per worker; 0 means one per physical core."""
    context_length: int = 4096
    """Context of a llama.cpp worker, shared evenly by its slots (each share at most the trained context)."""
    parallel: int = 0
    """Sequences a llama.cpp worker decodes together (slots); 0 picks from cores and context."""
    queue_depth: int = 64
    """Requests that may wait for a free slot; one more is answered 429 with Retry-After."""
    startup_timeout_s: float = 120.0
    """How long a worker may take to load its model before it counts as failed."""
    restart_backoff_s: float = 0.5
    """First delay before restarting a dead worker; doubles per consecutive failure."""
    restart_backoff_max_s: float = 30.0
    """Upper bound of the restart delay."""
    stop_timeout_s: float = 10.0
    """How long a worker gets to exit after SIGTERM before it is killed."""


class GpuSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How vLLM workers use NVIDIA GPUs (ignored on a machine without one)."""

    memory_utilization: float = 0.90
    """Share of each GPU's memory a vLLM worker may take for weights, activations and KV cache."""
    max_num_seqs: int = 16
    """Sequences a vLLM worker runs at once; the planner reserves KV cache for this many full contexts."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of a shared prompt prefix (system prompts) across requests."""


class SettingsFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What `settings.toml` may hold: its sections, each optional."""

    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    workers: WorkerSettings = WorkerSettings()
    gpu: GpuSettings = GpuSettings()


class Settings(SettingsFile, frozen=True, kw_only=True):
    """All settings of one appliance, plus `home`: where they were read from (APPLIANCE_HOME)."""

    home: Path

    @property
    def database_path(self) -> Path:
        """The SQLite registry."""
        return self.home / "registry.db"

    @property
    def run_dir(self) -> Path:
        """Runtime sockets and other per-run files."""
        return self.home / "run"


def home_from_environment() -> Path:
    """The data directory: `APPLIANCE_HOME` if set, else the system default. Read only by entry points."""
    return Path(os.environ.get("APPLIANCE_HOME", str(DEFAULT_HOME))).resolve()


_PATH_IN_MESSAGE = re.compile(r" - at `\$\.?([^`]*)`")


def _one_line_reason(path: Path, error: msgspec.MsgspecError) -> str:
    """Turn msgspec's message into `settings.toml: <reason> for key `server.port``."""
    text = str(error)
    match = _PATH_IN_MESSAGE.search(text)
    reason, key = (text[: match.start()], match.group(1)) if match else (text, "")
    if reason.startswith("Object contains unknown field"):
        unknown = reason.split("`")[1]
        return f"{path}: unknown key `{f'{key}.{unknown}' if key else unknown}`"
    return f"{path}: {reason} for key `{key}`" if key else f"{path}: {reason}"


def load_settings(home: Path) -> Settings:
    """Read `home/settings.toml` (missing file = defaults) into typed settings, or raise SettingsError."""
    path = home / SETTINGS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    except OSError as error:
        raise SettingsError(f"{path}: cannot read ({error.strerror})") from error
    try:
        found = msgspec.toml.decode(raw, type=SettingsFile)
    except msgspec.MsgspecError as error:
        raise SettingsError(_one_line_reason(path, error)) from error
    return Settings(server=found.server, limits=found.limits, workers=found.workers, gpu=found.gpu, home=home)


DEFAULT_SETTINGS_TEXT = """\
# Appliance settings. Every key is optional; the values shown are the defaults.

[server]
host = "127.0.0.1"
port = 8080

[limits]
max_body_bytes = 1048576
request_timeout_s = 600.0

[workers]
threads = 0              # 0 = one per physical core
context_length = 4096
parallel = 0             # slots per llama.cpp worker; 0 = chosen from cores and context
queue_depth = 64         # requests waiting for a slot before 429
startup_timeout_s = 120.0
restart_backoff_s = 0.5
restart_backoff_max_s = 30.0
stop_timeout_s = 10.0

[gpu]
memory_utilization = 0.90     # share of each GPU a vLLM worker may take
max_num_seqs = 16             # sequences per vLLM worker; KV cache is planned for this many contexts
enable_prefix_caching = true
"""


def write_default_settings(home: Path) -> Path:
    """Create `settings.toml` with the documented defaults if it does not exist yet (atomically)."""
    path = home / SETTINGS_FILE
    if not path.exists():
        atomic_write_text(path, DEFAULT_SETTINGS_TEXT)
    return path


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file completely or not at all: temp file in the same folder, fsync, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
