#!/usr/bin/env bash
# Drive `appliance tui` in tmux as a person would: move through the screens, create a key, read it off the
# screen and use it with curl. Usage: tmux_drive.sh BASE_URL ADMIN_KEY_FILE; prints the HTTP status.
set -euo pipefail
url="$1"
key_file="$2"
appliance="${APPLIANCE:-appliance}"
session="tui-drive-$$"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT

screen() { tmux capture-pane -p -t "$session" -J; }

# Wait (bounded) until the pane shows $1; on failure print the pane for the test's message.
wait_for() {
    for _ in $(seq 1 300); do
        if screen | grep -q -- "$1"; then return 0; fi
        sleep 0.1
    done
    echo "never saw '$1' on the screen:" >&2
    screen >&2
    return 1
}

# Wait (bounded) until the pane no longer shows $1.
wait_gone() {
    for _ in $(seq 1 300); do
        if ! screen | grep -q -- "$1"; then return 0; fi
        sleep 0.1
    done
    echo "'$1' stayed on the screen" >&2
    return 1
}

tmux new-session -d -s "$session" -x 120 -y 40 \
    "$appliance tui --url '$url' --key-file '$key_file'; echo EXITED \$?; sleep 30"
wait_for "engines ready"
wait_for "smollm2-135m"
tmux send-keys -t "$session" 2
wait_for "Changes apply at once"
tmux send-keys -t "$session" 4
wait_for "events"
tmux send-keys -t "$session" "?"
wait_for "Esc back to the table"
# Escape alone: a key sent right after it would read as Alt+key.
tmux send-keys -t "$session" Escape
wait_gone "Esc back to the table"
tmux send-keys -t "$session" 3
wait_for "New key"
tmux send-keys -t "$session" n
wait_for "who or what"
tmux send-keys -t "$session" -l "tmux-key"
tmux send-keys -t "$session" Enter
wait_for "Copy it now"
key="$(screen | grep -o 'apl-[0-9a-f]\{12\}-[A-Za-z0-9_-]\{43\}' | head -n 1)"
if [ -z "$key" ]; then
    echo "no key on the screen:" >&2
    screen >&2
    exit 1
fi
tmux send-keys -t "$session" Enter
wait_gone "Copy it now"
tmux send-keys -t "$session" q
wait_for "EXITED 0"
# Textual draws on stderr, so a traceback would be on the screen after the exit.
if screen | grep -q Traceback; then screen >&2; exit 1; fi
curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $key" "$url/v1/models"
