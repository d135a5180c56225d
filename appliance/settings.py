"""Typed settings, read once at start from `APPLIANCE_HOME/settings.toml` and passed down."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import msgspec

from appliance.errors import SettingsError, SignedBundleRequiredError
from appliance.settings_residency import ResidencySettings

SETTINGS_FILE = "settings.toml"
DEFAULT_HOME = Path("/var/lib/appliance")


TlsMode = Literal["off", "on", "terminated"]
"""How the gateway's connections are encrypted (appliance/tls.py): not at all, by the gateway itself, or by a
TLS terminator in front of it that the admin vouches for."""


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the gateway listens. Loopback by default: exposing it is an explicit choice, and beyond loopback
    `appliance serve` refuses plain HTTP unless `tls` says who encrypts (keys, prompts and the store
    passphrase would cross the LAN in clear text)."""

    host: str = "127.0.0.1"
    port: int = 8080
    drain_timeout_s: float = 30.0
    """On SIGTERM or Ctrl-C, how long requests in flight may run before streams are cut and workers stop."""
    tls: TlsMode = "off"
    """"off": plain HTTP, loopback only; "on": the gateway serves HTTPS (TLS 1.2 or later) with tls_cert and
    tls_key; "terminated": plain HTTP on any address, because a TLS terminator in front carries every
    connection (the admin's explicit statement, not something the appliance can check)."""
    tls_cert: str = ""
    """Absolute path of the server certificate (PEM; intermediates after it), for tls = "on"."""
    tls_key: str = ""
    """Absolute path of its private key (PEM, unencrypted: the service starts unattended)."""
    tls_client_ca: str = ""
    """Absolute path of CA certificates (PEM): set, every client must present a certificate they signed
    (mutual TLS), on top of its API key. Empty: no client certificates asked for."""

    def __post_init__(self) -> None:
        # Checked when the file is read; whether the files open and match is checked when serving starts.
        if self.tls == "on" and not (self.tls_cert and self.tls_key):
            raise ValueError('tls = "on" needs tls_cert and tls_key')
        if self.tls_client_ca and self.tls != "on":
            raise ValueError('tls_client_ca needs tls = "on" (behind a terminator, it checks clients)')
        for key in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, key)
            if value and not value.startswith("/"):
                raise ValueError(f"{key}: {value!r} is not an absolute path")

    @property
    def url(self) -> str:
        """The gateway's base URL, as the CLI and the console on this box reach it."""
        scheme = "https" if self.tls == "on" else "http"
        # "All interfaces" is no address to connect to: this box's own loopback is one of them.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"


class KeyLimitSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-key overrides, `[limits.keys."<key name>"]`: each unset value falls back to `[limits]`."""

    max_body_bytes: int | None = None
    max_messages: int | None = None
    max_choices: int | None = None
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    request_timeout_s: float | None = None


class SchemaLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[limits.schema]`: bounds on the JSON Schemas that become output grammars: `response_format`'s, and the
    tools' parameters whenever tools are offered. A schema's cost is out of all proportion to its bytes (the
    60 bytes of `{"type": "string", "maxLength": 100000000}` made a 762 MB grammar and crashed the worker),
    so past any of these the request is refused with 400 naming `response_format` or `tools`. The gateway
    checks the schema itself before any engine sees it; the llama.cpp worker checks again and bounds the
    grammar it writes. Not per key: one key's schema costs every key's requests on that engine."""

    max_bytes: int = 65_536
    """Largest schema, as compact JSON (for tools: each tool's parameters)."""
    max_depth: int = 32
    """Deepest nesting of JSON objects and arrays in one schema (a property's schema sits two levels below
    its object's, so 32 allows about 15 levels of nested objects)."""
    max_repetition: int = 1_000
    """Largest count a schema may ask to repeat: minLength/maxLength, minItems/maxItems and the {m,n}
    quantifiers of a `pattern`, anywhere in it. Each becomes that many nested copies of a rule; llama.cpp
    refuses 2,000."""
    max_grammar_bytes: int = 262_144
    """Largest grammar one request's schemas may become; on the way the converter may write four times as
    much (it rewrites some rules again and again), so its CPU time is bounded too (a few tenths of a second
    on a busy two-core box at worst). llama.cpp parses the grammar again on the thread that decodes for
    every request."""


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Request limits the gateway enforces before any engine sees the request (see api/limits.py).

    max_tokens is refused, not clamped: a request asking for more than `max_tokens` gets 400 (param
    `max_tokens`), so a client never silently gets less than it asked for; a request that names no
    max_tokens is given `max_tokens`. Below the limit the worker still clamps to the room left in the
    context, as llama.cpp does. The prompt is counted exactly by the worker: longer than its context is 400
    `context_length_exceeded`. The tokens-per-minute bucket is charged, as OpenAI does, at admission with an
    estimate: (characters of the prompt + 3) // 4 plus max_tokens; once the answer's usage is known the
    charge is corrected to the real prompt + completion tokens.
    """

    max_body_bytes: int = 1_048_576
    """Largest request body accepted; larger bodies get 413."""
    max_messages: int = 256
    """Most messages one chat request may carry; more is 400."""
    max_choices: int = 8
    """Most choices (`n`) one completion request may ask for; more is 400 (param `n`). The choices share one
    evaluation of the prompt, but each takes a slot and its own tokens."""
    max_tokens: int = 4096
    """Largest max_tokens (or max_completion_tokens) a request may ask for; more is 400."""
    max_prompt_tokens: int = 0
    """Most prompt tokens (counted by the worker's tokenizer, chat template included) one request may send;
    more is 400 `prompt_too_long`; 0 = only the model's context bounds the prompt."""
    requests_per_minute: int = 0
    """Requests per minute per key (a token bucket of this size); 0 = unlimited. Over it: 429."""
    tokens_per_minute: int = 0
    """Tokens per minute per key (a token bucket of this size, charged an estimate at admission and corrected
    to the real usage); 0 = unlimited. Over it: 429."""
    request_timeout_s: float = 600.0
    """Longest a single request may take, streamed or not; past it the request ends with 504 and its
    generation is cancelled."""
    max_stop_chars: int = 256
    """Longest stop string, in characters; longer is 400 `stop`. A request may send at most 4 (OpenAI's
    limit): each is looked for at the end of the text after every token."""
    max_embedding_inputs: int = 2048
    """Most inputs one embedding request may send (OpenAI's limit); more is 400 `input`."""
    max_embedding_chars: int = 262_144
    """Most characters all inputs of one embedding request may have together (a token id counts as one);
    more is 400 `input`. About 64k tokens: 2,048 inputs of 128 characters."""
    schema: SchemaLimits = SchemaLimits()
    """Bounds on the JSON Schemas that become grammars (`[limits.schema]`)."""
    keys: dict[str, KeyLimitSettings] = {}
    """Overrides by key name."""

    def for_key(self, key_name: str) -> LimitSettings:
        """The limits that apply to the key named `key_name` (its overrides over the defaults)."""
        found = self.keys.get(key_name)
        if found is None:
            return self
        overrides = {f: v for f in found.__struct_fields__ if (v := getattr(found, f)) is not None}
        return msgspec.structs.replace(self, **overrides)

    @property
    def largest_body_bytes(self) -> int:
        """The largest body any key may send: what the HTTP layer lets through before a key is known."""
        per_key = (k.max_body_bytes for k in self.keys.values() if k.max_body_bytes is not None)
        return max([self.max_body_bytes, *per_key])


ComputePriority = Literal["idle", "normal"]
"""How a llama.cpp worker's compute threads are scheduled (appliance/engines/llamacpp/priority.py)."""


class WorkerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How llama.cpp worker processes are started and supervised."""

    threads: int = 0
    """Generation threads per worker; 0 means one per physical core."""
    context_length: int = 0
    """Tokens one request may use, prompt and completion; 0 = the model's trained context (for vLLM:
    4096). Never more than the trained context; independent of the slots, which share one KV pool."""
    parallel: int = 0
    """Sequences a llama.cpp worker decodes together (slots); 0 = eight per compute thread, at most 16."""
    kv_pool_tokens: int = 0
    """KV cells all slots of a llama.cpp worker share; 0 = the planner's: every slot's full context, as
    far as kv_memory_share of the RAM left after the weights allows (never less than one context)."""
    kv_memory_share: float = 0.5
    """Share of the RAM left after a model's weights that its KV pool may take when the planner sizes it."""
    queue_depth: int = 64
    """Requests that may wait for a free slot; one more is answered 429 with Retry-After."""
    stream_interval: int = 0
    """Decode steps whose text a stream sends in one event (like vLLM's --stream-interval); 0 = by load:
    text goes out at most every 25 ms, and every second step from 4 busy slots on, where relaying each token
    alone costs a measurable share of the cores. A first token, an end or an error always goes out at once."""
    compute_priority: ComputePriority = "idle"
    """"idle": a llama.cpp worker's compute threads run under SCHED_IDLE, so request handling (gateway and
    worker event loops) never waits for a core: time to first token at concurrency 8 on two cores fell from
    about 70 to 58 ms. Anything else CPU-heavy on the box then goes before decoding; "normal" shares
    evenly."""
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


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The encrypted model store (appliance/store)."""

    require_encrypted: bool = False
    """Production: `appliance serve` refuses a model that is not in the encrypted store."""
    require_signed: bool = False
    """Models enter only in bundles signed by a trusted key (`appliance models import-bundle`): `models add`,
    `models import` and the admin API's import refuse a plain file or folder."""
    import_folders: tuple[str, ...] = ()
    """Absolute folders that models may be imported or added from (CLI and admin API), links resolved;
    empty = any folder. Whatever the setting, imports follow no link and read regular files only."""

    def __post_init__(self) -> None:
        # Relative to what? The gateway's working folder is no place an admin thinks of.
        for folder in self.import_folders:
            if not folder.startswith("/"):
                raise ValueError(f"import_folders: {folder!r} is not an absolute path")

    @property
    def import_roots(self) -> tuple[Path, ...]:
        """`import_folders` as paths."""
        return tuple(Path(folder) for folder in self.import_folders)

    def refuse_unsigned(self, source: object) -> None:
        """Refuse a plain model file or folder while `require_signed` is on (every plain way in calls it)."""
        if self.require_signed:
            raise SignedBundleRequiredError(
                f"{source}: [store] require_signed is on, so models enter only in a signed bundle: build one "
                "with `./build.sh bundle --profile models --model FILE` and import it with "
                "`appliance models import-bundle BUNDLE`",
                param="path",
            )


class RouteSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One public model name served by an ordered chain of registered models (`[routes.NAME]`)."""

    links: tuple[str, ...] = ()
    """Registered model names, tried in this order."""
    canned: str | None = None
    """Text answered when every link failed; unset means an exhausted chain answers 503."""
    prefer_warm: bool = False
    """A cold first link is skipped (reason `cold`) when a later link is loaded; false: wait for its load."""


class FallbackSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Circuit breakers, failover and the deep health probe of the fallback chain."""

    failure_threshold: int = 3
    """Consecutive failed requests that open a link's circuit."""
    cooldown_s: float = 30.0
    """How long an open circuit stays open before one trial request may pass (half-open)."""
    first_token_timeout_s: float = 60.0
    """A streamed request with no event from its engine in this time fails over to the next link."""
    probe_interval_s: float = 15.0
    """Seconds between two deep probes (a real tiny inference) of every engine."""
    probe_timeout_s: float = 30.0
    """A probe that takes longer counts as failed and opens the circuit."""
    probe_max_tokens: int = 2
    """Tokens a probe generates."""
    retry_after_s: int = 5
    """`Retry-After` of the 503 an exhausted chain without a canned answer gives."""


class EgressSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the appliance's processes may connect besides loopback and unix sockets (appliance/egress.py)."""

    allow: tuple[str, ...] = ()
    """Enclave networks (CIDR or address) and host names; a name only permits its look-up, so list its
    address too. Empty: nothing leaves the machine."""


class ActivationCheck(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One prompt a new model version must answer before it takes traffic (`[[activation.checks]]`)."""

    prompt: str
    expect: str = ""
    """If set, the answer must contain this text (case-insensitive)."""
    chat: bool = False
    """Send the prompt as a chat message (skipped for a model without a chat template) or as a completion."""
    max_tokens: int = 16


DEFAULT_ACTIVATION_CHECKS = (
    ActivationCheck(prompt="The capital of France is", max_tokens=8),
    ActivationCheck(prompt="Say hello in one word.", chat=True, max_tokens=8),
)


class ActivationSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How `appliance models activate` checks a new version beside the serving one (blue-green)."""

    checks: tuple[ActivationCheck, ...] = DEFAULT_ACTIVATION_CHECKS
    """The prompt suite, run after the deep probe; every check must answer with at least one token."""
    check_timeout_s: float = 60.0
    """One check that takes longer fails the activation."""


class AuditSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[audit]`: how failed authentications are summed up and how much of the audit log is kept. The gateway
    prunes at start and hourly; denied rows go first when the log is over `max_rows`, so a flood of bad keys
    cannot push the record of admin actions out."""

    failure_window_s: float = 60.0
    """Failed authentications (and user keys on admin routes) from one client address for one reason are one
    row when the first arrives and, if more follow within this window, one row with their count at its end."""
    retention_days: int = 365
    """Rows older than this are deleted; 0 = kept however old."""
    max_rows: int = 500_000
    """Most rows kept (about 150 MB); past it the oldest denied rows, then the oldest rows, are deleted."""

    def __post_init__(self) -> None:
        if self.failure_window_s <= 0 or self.retention_days < 0 or self.max_rows < 1:
            raise ValueError(
                "audit: failure_window_s and max_rows must be positive, retention_days not negative"
            )


class SettingsFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What `settings.toml` may hold: its sections, each optional."""

    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    workers: WorkerSettings = WorkerSettings()
    gpu: GpuSettings = GpuSettings()
    fallback: FallbackSettings = FallbackSettings()
    routes: dict[str, RouteSettings] = msgspec.field(default_factory=dict)
    store: StoreSettings = StoreSettings()
    egress: EgressSettings = EgressSettings()
    activation: ActivationSettings = ActivationSettings()
    audit: AuditSettings = AuditSettings()
    residency: ResidencySettings = ResidencySettings()


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
    return Settings(
        server=found.server,
        limits=found.limits,
        workers=found.workers,
        gpu=found.gpu,
        fallback=found.fallback,
        routes=found.routes,
        store=found.store,
        egress=found.egress,
        activation=found.activation,
        audit=found.audit,
        residency=found.residency,
        home=home,
    )
