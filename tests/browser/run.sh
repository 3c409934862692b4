#!/bin/sh
# Runs the web app's real-browser tests: installs the npm dependencies,
# makes sure Debian's chromium is there (never a downloaded browser),
# builds confab unless CONFAB_BIN names a binary, and runs the suite.
#
#   tests/browser/run.sh                 # everything
#   tests/browser/run.sh test/restart.test.mjs   # one file
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chromium=${CHROMIUM_BIN:-/usr/bin/chromium}

cd "$here"
npm ci --no-audit --no-fund --loglevel=error

if [ ! -x "$chromium" ]; then
    echo "run.sh: $chromium is missing; installing Debian's chromium" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y chromium
fi

# One start outside the tests, so that whatever a first start sets up
# (font caches, the profile directory) is not charged to a test's timeout.
profile=$(mktemp -d)
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu \
    --disable-background-networking --user-data-dir="$profile" \
    --dump-dom about:blank >/dev/null 2>&1 ||
    echo "run.sh: a first chromium start did not finish cleanly; the tests will retry" >&2
rm -rf "$profile"

if [ -z "${CONFAB_BIN:-}" ]; then
    (cd "$root" && cargo build -p confab)
    CONFAB_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/confab"
    export CONFAB_BIN
fi

if [ "$#" -eq 0 ]; then set -- test/; fi
exec timeout 900 node --test --test-concurrency=1 --test-timeout=120000 "$@"
