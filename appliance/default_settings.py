"""The settings file a new home starts with: every key, commented, at its default (see settings.py)."""

from __future__ import annotations

from pathlib import Path

from appliance.atomic_files import atomic_write_text
from appliance.settings import SETTINGS_FILE

DEFAULT_SETTINGS_TEXT = """\
# Appliance settings. Every key is optional; the values shown are the defaults.

[server]
host = "127.0.0.1"
port = 8080
drain_timeout_s = 30.0   # on SIGTERM/Ctrl-C: running streams may finish this long, then are cut
tls = "off"              # beyond loopback: "on" (HTTPS, the files below) or "terminated" (a proxy does TLS)
tls_cert = ""            # absolute path of the certificate (PEM), for tls = "on"
tls_key = ""             # absolute path of its unencrypted private key (PEM)
tls_client_ca = ""       # set: clients must present a certificate signed by these CAs (mutual TLS)

[limits]
max_body_bytes = 1048576
max_messages = 256
max_choices = 8            # most `n` a request may ask for
max_tokens = 4096          # a request asking for more is refused (400), not clamped
requests_per_minute = 0    # per key; 0 = unlimited
tokens_per_minute = 0      # per key, estimated at admission; 0 = unlimited
request_timeout_s = 600.0
max_stop_chars = 256       # longest stop string (at most 4 of them)
max_embedding_inputs = 2048
max_embedding_chars = 262144   # all inputs of one embedding request together

[limits.schema]            # JSON Schemas of response_format and tools, before they become grammars
max_bytes = 65536
max_depth = 32
max_repetition = 1000      # minLength/maxLength, minItems/maxItems, {m,n} in patterns
max_grammar_bytes = 262144
# Per-key overrides, by key name:
# [limits.keys."reporting"]
# requests_per_minute = 60

[workers]
threads = 0              # 0 = one per physical core
context_length = 0       # tokens per request; 0 = the model's trained context (vLLM: 4096)
parallel = 0             # slots per llama.cpp worker; 0 = eight per compute thread, at most 16
kv_pool_tokens = 0       # KV cells the slots share; 0 = sized by the planner (`appliance plan` shows it)
kv_memory_share = 0.5    # share of the RAM left after the weights that the planner gives the KV pool
queue_depth = 64         # requests waiting for a slot before 429
stream_interval = 0      # decode steps whose text goes out in one event; 0 = by load (at most every 25 ms)
compute_priority = "idle"  # llama.cpp compute threads yield to request handling; "normal" on a shared box
startup_timeout_s = 120.0
restart_backoff_s = 0.5
restart_backoff_max_s = 30.0
stop_timeout_s = 10.0

[gpu]
memory_utilization = 0.90     # share of each GPU a vLLM worker may take
max_num_seqs = 16             # sequences per vLLM worker; KV cache is planned for this many contexts
enable_prefix_caching = true

[residency]                   # models load on first request, unload when idle (least recently used first)
ram_budget_gib = 0.0          # RAM llama.cpp workers may take together; 0 = what is available at start
gpu_budget_share = 0.0        # share of a GPU a vLLM worker may take; 0 = [gpu] memory_utilization
max_loaded = 0                # most models loaded at once; 0 = as many as memory holds
load_timeout_s = 120.0        # a request waits this long for its model to load, then 503 + Retry-After
keep_alive_s = 300.0          # idle seconds before unloading; -1 = pinned, 0 = after each request

[store]
require_encrypted = false     # true: serve only models imported into the encrypted store
require_signed = false        # true: models enter only by `appliance models import-bundle` (signed bundles)
import_folders = []           # absolute folders imports may read from, e.g. ["/srv/models"]; empty = any

[egress]
allow = []                    # enclave CIDRs or host names this appliance may reach; empty = loopback only

[activation]
check_timeout_s = 60.0
# `appliance models activate` loads a new version beside the serving one, runs the deep probe and these
# prompts, and switches only if all pass. Without any [[activation.checks]], two built-in ones run.
# [[activation.checks]]
# prompt = "The capital of France is"
# expect = "Paris"            # optional: the answer must contain this
# chat = false                # true: sent as a chat message
# max_tokens = 8

[audit]
failure_window_s = 60.0       # failed authentications per client address and reason: one row, then a count
retention_days = 365          # older rows are pruned (at start and hourly); 0 = keep
max_rows = 500000             # past it the oldest denied rows go first
"""


def write_default_settings(home: Path) -> Path:
    """Create `settings.toml` with the documented defaults if it does not exist yet (atomically)."""
    path = home / SETTINGS_FILE
    if not path.exists():
        atomic_write_text(path, DEFAULT_SETTINGS_TEXT)
    return path
