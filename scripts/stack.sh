#!/usr/bin/env bash
# Bring the Prefect stack of batchscore up and down on this machine (`make up`, `make down`).
#
#   scripts/stack.sh up       server on 127.0.0.1:4200, work pool, deployments, worker
#   scripts/stack.sh down     stop exactly the server and worker that `up` started (and children)
#   scripts/stack.sh status   say what is running
#
# State lives in .prefect/ at the repository root (gitignored): PREFECT_HOME with the SQLite
# database, the pid files and the logs. `up` is idempotent: a running server or worker is kept,
# the pool is created only when missing, and deploying again only updates the deployments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
STATE="$ROOT/.prefect"
HOST="127.0.0.1"
PORT="${PREFECT_SERVER_API_PORT:-4200}"  # Prefect's own name for the server's port
POOL="batchscore"
API="http://$HOST:$PORT/api"

export PREFECT_HOME="$STATE"
export PREFECT_API_URL="$API"
# The UI asks this URL for its data; it defaults to port 4200 whatever --port says.
export PREFECT_SERVER_UI_API_URL="$API"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GX_ANALYTICS_ENABLED=false

prefect() { "$VENV_BIN/prefect" "$@"; }

# pid of a process we started, if it is still that process (a reused pid is not ours).
alive() {
    local file="$STATE/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    ps -o command= -p "$pid" 2>/dev/null | grep -q "prefect" || return 1
    echo "$pid"
}

healthy() { "$VENV_BIN/python" - "$API/health" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

# Start a command in its own session (so `down` can stop its whole process group) and
# record its pid. The venv's Python does the setsid (`setsid(1)` is not on every system) and
# restores SIGINT: a shell starts background jobs with SIGINT ignored, and Prefect stops
# gracefully on SIGTERM by sending itself SIGINT, which would then do nothing.
launch() {
    local name="$1"
    shift
    "$VENV_BIN/python" -c '
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
os.execv(sys.argv[1], sys.argv[1:])' "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

# Every descendant of a pid, children first listed after their parent.
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

any_alive() {
    local p
    for p in "$@"; do
        kill -0 "$p" 2>/dev/null && return 0
    done
    return 1
}

stop() {
    local name="$1" pid pids p
    if ! pid="$(alive "$name")"; then
        rm -f "$STATE/$name.pid"
        return 0
    fi
    # Snapshot the tree first: children whose parent dies are re-parented and lost to us.
    # Flow runs started by the worker run in their own sessions, so the group is not enough.
    pids="$pid $(descendants "$pid" | tr '\n' ' ')"
    echo "stopping $name (pids $pids)"
    # One SIGTERM each: Prefect's second SIGTERM means SIGKILL, so the group (which holds
    # the leader) is signalled once and only descendants in other groups get their own.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for p in $pids; do
        [[ "$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ')" == "$pid" ]] || kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 1 40); do
        # shellcheck disable=SC2086
        any_alive $pids || break
        sleep 0.5
    done
    for p in $pids; do
        if kill -0 "$p" 2>/dev/null; then
            echo "$name: pid $p did not stop within 20 s; killing it"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    rm -f "$STATE/$name.pid"
}

fail() {
    echo "$1; last lines of .prefect/$2.log:" >&2
    tail -n 40 "$STATE/$2.log" >&2
    exit 1
}

up() {
    mkdir -p "$STATE"
    if pid="$(alive server)"; then
        echo "server already running (pid $pid)"
    else
        if healthy; then
            echo "something else answers on $API; stop it or set PREFECT_SERVER_API_PORT" >&2
            exit 1
        fi
        launch server "$VENV_BIN/prefect" server start --host "$HOST" --port "$PORT"
        echo "server starting (pid $(cat "$STATE/server.pid"), log .prefect/server.log)"
    fi
    for _ in $(seq 1 240); do
        healthy && break
        alive server >/dev/null || fail "the server exited" server
        sleep 0.5
    done
    if ! healthy; then
        echo "the server did not answer $API/health within 120 s; see .prefect/server.log" >&2
        stop server
        exit 1
    fi

    if ! prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
        prefect work-pool create "$POOL" --type process >"$STATE/pool.log" 2>&1 ||
            fail "could not create the work pool" pool
        echo "work pool $POOL created"
    fi
    # The pull step's {{ $PWD }} is resolved now: deploy from the repository root.
    (cd "$ROOT" && PWD="$ROOT" prefect --no-prompt deploy --all) >"$STATE/deploy.log" 2>&1 ||
        fail "prefect deploy --all failed" deploy
    grep -o "Deployment '[^']*' successfully [a-z]*" "$STATE/deploy.log" || true

    if pid="$(alive worker)"; then
        echo "worker already running (pid $pid)"
    else
        (cd "$ROOT" && PWD="$ROOT" launch worker "$VENV_BIN/prefect" worker start --pool "$POOL")
        echo "worker started (pid $(cat "$STATE/worker.pid"), log .prefect/worker.log)"
    fi

    cat <<EOF

batchscore is deployed. Point your shell at this server, then start a run:

    export PREFECT_API_URL=$API
    .venv/bin/prefect deployment run score/nightly-score
    .venv/bin/prefect deployment run retrain/retrain -p reason="new labels"

UI: http://$HOST:$PORT      stop everything: make down
EOF
}

status() {
    local name pid
    for name in server worker; do
        if pid="$(alive "$name")"; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
        fi
    done
    if healthy; then echo "api: $API answers"; else echo "api: $API does not answer"; fi
}

case "${1:-}" in
    up) up ;;
    down)
        stop worker
        stop server
        ;;
    status) status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
