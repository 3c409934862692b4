#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with Schemathesis.
#
# Creates (or reuses) a virtualenv under target/ (git-ignored), installs a
# pinned Schemathesis, starts confab on a free port with a temporary
# SQLite store, an API key and a token secret, and runs Schemathesis
# against /api/openapi.json. Fails on any 5xx, any response that breaks
# the document (status, content type, headers, body schema), an accepted
# invalid request, an ignored API key, or a crash of the server.
#
# Environment:
#   CONFAB_BIN            a built confab binary (default: build debug with cargo)
#   SCHEMATHESIS_VENV     where the virtualenv lives (default: target/schemathesis-venv)
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation (default: 25)
#   SCHEMATHESIS_MAX_TIME      seconds for the whole run (default: 120)
#   SCHEMATHESIS_SEED          random seed (default: fixed, for repeatable CI)
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${SCHEMATHESIS_VENV:-$ROOT/target/schemathesis-venv}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-120}"
SEED="${SCHEMATHESIS_SEED:-20240601}"
API_KEY="schemathesis-api-key-$RANDOM$RANDOM"
TOKEN_SECRET="schemathesis-token-secret-$RANDOM$RANDOM"

log() { echo "schemathesis.sh: $*" >&2; }

# 1. Schemathesis, pinned, in its own virtualenv.
if [ ! -x "$VENV/bin/schemathesis" ] \
    || [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
    log "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# 2. The server.
if [ -z "${CONFAB_BIN:-}" ]; then
    log "building confab"
    (cd "$ROOT" && cargo build --quiet --bin confab)
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    CONFAB_BIN="$TARGET/debug/confab"
fi
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

env -u CONFAB_CONFIG "$CONFAB_BIN" serve \
    --listen 127.0.0.1:0 \
    --store "sqlite://$WORK/confab.db" \
    --api-key "$API_KEY" \
    --token-secret "$TOKEN_SECRET" \
    --log-format json \
    --shutdown-timeout 2 \
    2>"$WORK/server.log" &
SERVER_PID=$!

ADDR=""
for _ in $(seq 1 100); do
    ADDR="$("$VENV/bin/python" - "$WORK/server.log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if fields.get("message") == "confab listening":
        print(fields["addr"])
        break
PY
)"
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; log "confab did not start"; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/server.log" >&2; log "confab did not say where it listens"; exit 1; }
log "confab listening on $ADDR"

# 3. The fuzzing, bounded in examples and time.
# Run in the temporary directory, with no example database, so no state
# is left in the tree or carried from one run to the next.
cd "$WORK"
status=0
"$VENV/bin/schemathesis" run "http://$ADDR/api/openapi.json" \
    --header "Authorization: Bearer $API_KEY" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "$SEED" \
    --generation-database none \
    --workers 1 \
    --request-timeout 10 \
    --no-color \
    || status=$?

# 4. The server must have survived it, without a panic.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "confab died during the run"
    tail -n 50 "$WORK/server.log" >&2
    status=1
fi
if grep -q '"panicked\|panicked at' "$WORK/server.log"; then
    log "confab panicked during the run"
    grep 'panicked' "$WORK/server.log" >&2 || true
    status=1
fi
if [ "$status" -ne 0 ]; then
    log "FAILED (exit $status)"
else
    log "passed: no 5xx, no response outside the document"
fi
exit "$status"
