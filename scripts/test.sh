#!/usr/bin/env bash
# Runs pgenrich's whole test suite. On a fresh Debian or Ubuntu machine with Rust it first
# installs what the tests need: the PostgreSQL server and client and the Redis server (the
# integration tests start their own throw-away servers from these binaries) and pgbouncer (for
# benches/e2e_relay.sh), a C++ compiler (the fuzz crate, which the command also checks),
# Node.js with npm (the Node.js drivers' test), and a JDK with pgjdbc (the JDBC test).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || [ -n "${PG_BIN:-}" ] || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
command -v redis-server >/dev/null || [ -n "${REDIS_SERVER:-}" ] || missing+=(redis-server)
command -v c++ >/dev/null || missing+=(g++)  # libfuzzer-sys, built by the fuzz crate's check
command -v node >/dev/null || missing+=(nodejs)  # the Node.js drivers' test
command -v npm >/dev/null || missing+=(npm)
command -v javac >/dev/null || missing+=(default-jdk-headless)  # pgjdbc's test
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python clients of the tests: moto's server mode (a third-party AWS emulator the compatibility
# test calls through pgenrich), psycopg 3 and asyncpg (drivers) and SQLAlchemy (its
# stream_results).
if ! python3 -c 'import moto.server' 2>/dev/null; then
  echo "installing moto[server] from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
if ! python3 -c 'import psycopg' 2>/dev/null; then
  echo "installing psycopg[binary] from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]'
fi
if ! python3 -c 'import asyncpg' 2>/dev/null; then
  echo "installing asyncpg from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check asyncpg
fi
if ! python3 -c 'import sqlalchemy' 2>/dev/null; then
  echo "installing sqlalchemy from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'sqlalchemy>=2'
fi

# Node.js clients of the tests (node-postgres, pg-cursor, postgres.js), as package-lock.json
# pins them.
if [ ! -d tests/clients/node/node_modules ]; then
  echo "installing the Node.js clients from the npm registry"
  npm ci --prefix tests/clients/node --no-audit --no-fund --silent
fi

# The fuzz crate (fuzz/, run by scripts/fuzz.sh on nightly) must keep compiling against the
# code it fuzzes: checked here on the stable toolchain.
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
cargo test --locked --workspace --all-targets "$@"
# The integration suite twice more: with TLS to the database (TLS sessions on the pass-through
# loops), and with the loops off (every session relayed on the tokio runtime).
PGENRICH_TEST_UPSTREAM_TLS=prefer cargo test --locked --test it "$@"
PGENRICH_TEST_DIRECT_RELAY=false cargo test --locked --test it "$@"
