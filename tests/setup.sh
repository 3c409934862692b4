#!/usr/bin/env bash
# Makes this machine ready for the test suite, as if it were new: installs
# what is missing (Debian packages) and starts Redis and PostgreSQL if they
# are down. Idempotent and quick when everything is there. Sourced by
# tests/all.sh; exports CONFAB_TEST_REDIS_URL and CONFAB_TEST_POSTGRES_URL.
set -euo pipefail

apt_updated=
need_pkg() { # need_pkg COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "setup: $1 is missing and installing it needs root: apt-get install ${*:2}" >&2
    return 1
  fi
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${@:2}" >/dev/null
}

# The build compiles C: bundled SQLite (cc) and jemalloc (cc, make).
need_pkg cc gcc
need_pkg make make
need_pkg redis-server redis-server
need_pkg redis-cli redis-tools
need_pkg psql postgresql postgresql-client
need_pkg node nodejs
need_pkg npm npm
need_pkg chromium chromium
need_pkg chromedriver chromium-driver
need_pkg python3 python3 python3-venv

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break
  sleep 0.2
done
# The tests create their own databases from the `test` one.
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  su postgres -c "psql -c \"ALTER USER postgres PASSWORD NULL\"" >/dev/null 2>&1 || true
  su postgres -c "createdb test" >/dev/null 2>&1 || true
fi

export CONFAB_TEST_REDIS_URL=${CONFAB_TEST_REDIS_URL:-redis://127.0.0.1:6379/}
export CONFAB_TEST_POSTGRES_URL=${CONFAB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
