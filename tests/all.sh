#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (against real
# Redis and PostgreSQL), the browser tests, the Autobahn suite on the echo
# path, and the extra suites that exist (API fuzzing, bench smoke).
# Installs and starts what it needs first (tests/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh

suites=0
# Each heading says how long the suite has run so far, so a slow step shows.
step() { printf '\n== %s (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); suites=$((suites + 1)); }

step "cargo fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test (Redis: $CONFAB_TEST_REDIS_URL, PostgreSQL: $CONFAB_TEST_POSTGRES_URL)"
# Tests that need a service read its URL from the environment; without it
# they print a SKIP line, except under CI=true, where they fail instead.
cargo test --workspace

step "the README's first command resolves the server binary"
cargo run -q -- --version

for suite in tests/browser/run.sh tests/api/schemathesis.sh bench/smoke; do
  if [ -x "$suite" ]; then
    step "$suite"
    "$suite"
  fi
done

step "tests/autobahn/run.sh"
tests/autobahn/run.sh

# Every step above stops the script on failure, so reaching here means
# all of them passed.
echo
printf 'suites: %d passed, 0 failed, in %dm%02ds\n' "$suites" $((SECONDS / 60)) $((SECONDS % 60))
