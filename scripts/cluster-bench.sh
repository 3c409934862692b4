#!/usr/bin/env bash
# One room under the same paced load, measured in one run: members on one
# node, then spread over two nodes of a cluster (Redis + PostgreSQL), and
# a single node with the embedded defaults for reference.
#   CONFAB=target/release/confab BENCH=path/to/confab-bench scripts/cluster-bench.sh
# Needs CONFAB_TEST_REDIS_URL and CONFAB_TEST_POSTGRES_URL (as the tests).
set -euo pipefail
CONFAB=${CONFAB:-target/release/confab}
BENCH=${BENCH:?path to the confab-bench binary}
REDIS=${CONFAB_TEST_REDIS_URL:?}
PG=${CONFAB_TEST_POSTGRES_URL:?}
MEMBERS=${MEMBERS:-50} PUBLISHERS=${PUBLISHERS:-5} RATE=${RATE:-400} DURATION=${DURATION:-10}
db=confab_bench_$$
psql "$PG" -qc "CREATE DATABASE $db" >/dev/null
store="${PG%/*}/$db"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
start() { # start PORT [env...]
  local port=$1; shift
  env RUST_LOG=confab=warn CONFAB_LISTEN=127.0.0.1:$port CONFAB_RATE_LIMIT=0 "$@" \
    "$CONFAB" 2>>"$tmp/nodes.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "node on $port not ready" >&2; cat "$tmp/nodes.log" >&2; exit 1
}
cluster=(CONFAB_BROKER=$REDIS CONFAB_STORE=$store CONFAB_CLUSTER_NAME=bench$$)
start 18101 "${cluster[@]}" CONFAB_NODE_ID=bench-a
start 18102 "${cluster[@]}" CONFAB_NODE_ID=bench-b
start 18103 CONFAB_STORE="sqlite://$tmp/single.db"
run() { # run LABEL ADDRS
  "$BENCH" fanout --proto native --addr "$2" --label "$1" --rooms 1 \
    --members "$MEMBERS" --publishers "$PUBLISHERS" --rate "$RATE" --duration "$DURATION"
}
run "cluster, one node" 127.0.0.1:18101
run "cluster, two nodes" 127.0.0.1:18101,127.0.0.1:18102
run "single node, memory+sqlite" 127.0.0.1:18103
