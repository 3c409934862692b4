#!/usr/bin/env bash
# Runs the Autobahn TestSuite's fuzzingclient (cases 1.* to 10.*) against
# /ws/echo/ and fails if any case is FAILED. The suite is Python 2.7 code.
# Usage: tests/autobahn/run.sh [path/to/confab]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/debug/confab}
work=$root/target/autobahn
mkdir -p "$work"

py2=$(ls -d "$HOME"/.pyenv/versions/2.7*/bin/python 2>/dev/null | head -n1 || true)
if [ -z "$py2" ] && python2.7 -c pass 2>/dev/null; then py2=$(command -v python2.7); fi
if [ -z "$py2" ]; then
  echo "autobahn: SKIP: no Python 2.7 on this machine (the suite needs it)"
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
export PYTHONUSERBASE=$work/py
if [ ! -x "$PYTHONUSERBASE/bin/wstest" ]; then
  "$py2" -m pip install --user --quiet --disable-pip-version-check --no-warn-script-location autobahntestsuite==25.10.1 2>&1 | grep -v DEPRECATION || true
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --store sqlite::memory: >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.1
done

rm -rf "$work/report"
cat >"$work/spec.json" <<JSON
{"outdir": "$work/report",
 "servers": [{"agent": "confab", "url": "ws://127.0.0.1:$port/ws/echo/"}],
 "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
 "exclude-cases": [], "exclude-agent-cases": {}}
JSON
(cd "$work" && timeout 900 "$py2" "$PYTHONUSERBASE/bin/wstest" -m fuzzingclient -s spec.json >fuzzingclient.log 2>&1)

python3 - "$work/report/index.json" <<'PY'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["confab"]
tally = collections.Counter(c["behavior"] for c in cases.values())
bad = sorted(k for k, c in cases.items()
             if c["behavior"] == "FAILED" or c["behaviorClose"] == "FAILED")
print("autobahn: %d cases: %s" % (len(cases), ", ".join("%s %d" % kv for kv in sorted(tally.items()))))
if bad:
    print("autobahn: FAILED cases: " + " ".join(bad))
    sys.exit(1)
PY
