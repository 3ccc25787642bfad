#!/usr/bin/env bash
# pgenrich quickstart on embedded models: no AWS account needed.
#
#   ./scripts/quickstart.sh
#
# On a Debian or Ubuntu machine with Rust: installs PostgreSQL when missing, starts a throw-away
# cluster with the demo data (demo/demo.sql), builds and starts pgenrich with
# config/quickstart.toml (VADER sentiment, ONNX fraud and recommendation models), runs the example
# queries of demo/queries.sql through it with psql, then keeps pgenrich running and prints a
# connection string to try more. Ctrl-C stops everything it started and removes the cluster.
#
# Environment: QUICKSTART_PORT (pgenrich's port, default 6432 or the next free one),
# QUICKSTART_PROFILE (cargo profile, default dev: a first build of about 5 minutes on 2 cores
# instead of 15-20 for release, and plenty fast for the demo), QUICKSTART_EXIT=1 (stop after the
# queries).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
if [[ -z ${PG_BIN:-} ]] && ! find_pg_bin >/dev/null || ! command -v psql >/dev/null; then
    log "installing PostgreSQL (apt-get install postgresql postgresql-client)"
    sudo=""
    ((EUID == 0)) || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        postgresql postgresql-client >&2
fi
PG_BIN=${PG_BIN:-$(find_pg_bin)} || die "no PostgreSQL server binaries under /usr/lib/postgresql"
command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"

pick_run_as

# A loopback port nobody listens on, from $1 upwards.
free_port_from() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}

# ---------------------------------------------------------------------------------------------
# Build first: it is the slow part, and nothing needs cleaning up yet.
# ---------------------------------------------------------------------------------------------
PROFILE=${QUICKSTART_PROFILE:-dev}
log "building pgenrich (cargo --profile $PROFILE; the first build takes a few minutes)"
cargo build --locked --profile "$PROFILE" --bin pgenrich
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $PROFILE == dev ]] && PGENRICH_BIN=$TARGET_DIR/debug/pgenrich || PGENRICH_BIN=$TARGET_DIR/$PROFILE/pgenrich

TMP=$(mktemp -d /tmp/pgenrich-quickstart.XXXXXX)
chmod 755 "$TMP"
PG_STARTED=0
PGENRICH_PID=""
cleanup() {
    trap - EXIT INT TERM
    stop_pgenrich
    stop_postgres
    rm -rf "$TMP"
    log "stopped; removed $TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# A throw-away cluster with the demo data
# ---------------------------------------------------------------------------------------------
PG_PORT=$(free_port_from 54329)
SUPER_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$SUPER_PASSWORD" >"$TMP/pwfile"
chown "$RUN_AS" "$TMP" "$TMP/pwfile"
log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (data in $TMP/data)"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --no-locale \
    -A scram-sha-256 --pwfile="$TMP/pwfile" >"$TMP/initdb.log" 2>&1 ||
    die "initdb failed: $(cat "$TMP/initdb.log")"
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $TMP -c listen_addresses=127.0.0.1" start >/dev/null ||
    die "PostgreSQL did not start: $(tail -n 20 "$TMP/postgres.log")"
PG_STARTED=1
PGPASSWORD=$SUPER_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE demo LOGIN PASSWORD 'demo'" -c "CREATE DATABASE demo OWNER demo" >/dev/null
PGPASSWORD=demo psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U demo -d demo \
    -f demo/demo.sql >/dev/null
log "loaded the demo data: transactions, reviews, customers, products"

# ---------------------------------------------------------------------------------------------
# pgenrich with the embedded backends
# ---------------------------------------------------------------------------------------------
PORT=$(free_port_from "${QUICKSTART_PORT:-6432}")
RUST_LOG=${RUST_LOG:-info} "$PGENRICH_BIN" --config config/quickstart.toml \
    --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$PG_PORT" >"$TMP/pgenrich.log" 2>&1 &
PGENRICH_PID=$!
for ((i = 0; i < 100; i++)); do
    alive "$PGENRICH_PID" || die "pgenrich exited: $(cat "$TMP/pgenrich.log")"
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
log "pgenrich is listening on 127.0.0.1:$PORT (log: $TMP/pgenrich.log)"

URL="postgresql://demo:demo@127.0.0.1:$PORT/demo?sslmode=disable"
log "running demo/queries.sql through pgenrich"
echo
psql "$URL" -X -v ON_ERROR_STOP=1 -a -f demo/queries.sql
echo

if [[ ${QUICKSTART_EXIT:-0} == 1 ]]; then
    exit 0
fi
cat >&2 <<EOF
pgenrich is running in front of the demo database. Try more queries:

  psql '$URL'

  SELECT id, aws_sagemaker.invoke_endpoint('fraud', NULL, amount, hour, distance_km,
         foreign_country, card_present) FROM transactions WHERE NOT card_present LIMIT 5;
  SELECT r.body, s.* FROM reviews r, aws_comprehend.detect_sentiment(r.body, 'en') s LIMIT 5;

Press Ctrl-C to stop pgenrich and PostgreSQL and remove the cluster.
EOF
wait "$PGENRICH_PID" || true
log "pgenrich exited: $(tail -n 5 "$TMP/pgenrich.log")"
