#!/usr/bin/env bash
# End-to-end benchmark of small ML statements: pgbench sending one-row
#   SELECT (aws_comprehend.detect_sentiment('a good day ' || random()::text, 'en')).sentiment
# through pgenrich with its embedded sentiment backend (VADER, no service call), so what is
# measured is pgenrich's own cost per ML statement: inspecting and planning it, the base
# statement's round trip to PostgreSQL, scoring, and the answer. For scale, the same statement
# without the ML call (`SELECT 'a good day ' || random()::text`) straight to PostgreSQL and
# through pgenrich (relayed). Every statement's text differs (random()), so no cache hides work.
#
# Usage (from anywhere; the repo root is found from this file):
#   benches/e2e_small_ml.sh                       # ROUNDS=5 DURATION=10 (about 4 minutes)
#   QUICK=1 benches/e2e_small_ml.sh               # ROUNDS=1 DURATION=3
#   PGENRICH_BINS="/tmp/pgenrich-old target/release/pgenrich" SKIP_BUILD=1 benches/e2e_small_ml.sh
#
# Environment:
#   ROUNDS          interleaved rounds (default 5; 1 with QUICK=1); medians quoted
#   DURATION        seconds per pgbench run (default 10; 3 with QUICK=1)
#   CLIENTS         pgbench clients of the throughput runs (default 4, on 2 pgbench threads as in
#                   e2e_relay.sh); latency runs use 1
#   PGENRICH_BINS   pgenrich binaries to compare, space-separated (default: the release build);
#                   each gets its own rows, labelled by its path
#   OUT=path        also write the Markdown results to this file
#   SKIP_BUILD=1    use the existing release binary instead of running cargo build --release
#   PGENRICH_ARGS   extra pgenrich flags, split on spaces
#
# Everything runs on 127.0.0.1 on free ports, in a mktemp -d directory that is removed on exit,
# together with every process the script started. Exit status: 0 when every run succeeded, 1
# when a run failed (shown as FAIL), 2 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUT=${OUT:-}
BIN_LIST=${PGENRICH_BINS:-}   # read before isolate_env clears PGENRICH_*

log() { printf '[e2e-small-ml %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

need_positive_ints ROUNDS DURATION CLIENTS
isolate_env

PG_BIN=$(find_pg_bin initdb pg_ctl postgres pgbench psql) || die "no /usr/lib/postgresql/<ver>/bin with initdb pg_ctl postgres pgbench psql; install it with: apt-get install -y postgresql postgresql-contrib"
pick_run_as

RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 to use an existing binary)"
    log "cargo build --release (pgenrich)"
    cargo build --release -p pgenrich --bin pgenrich >&2
fi
read -r -a BINS <<<"${BIN_LIST:-$RELEASE/pgenrich}"
for bin in "${BINS[@]}"; do [[ -x $bin ]] || die "$bin does not exist"; done

TMP=$(mktemp -d /tmp/pgenrich-e2e-small-ml.XXXXXX)
PGENRICH_PID=""
PG_STARTED=0
CLEANED=0


cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM
    stop_pgenrich
    stop_postgres
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((EUID == 0)); then chown "$RUN_AS": "$TMP"; fi
chmod 755 "$TMP"
PG_PORT=$(free_port); USED_PORTS[$PG_PORT]=1
PGENRICH_PORT=$(free_port); USED_PORTS[$PGENRICH_PORT]=1

log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
init_trust_cluster
start_cluster "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$TMP"

echo "SELECT (aws_comprehend.detect_sentiment('a good day ' || random()::text, 'en')).sentiment;" >"$TMP/ml.sql"
echo "SELECT 'a good day ' || random()::text;" >"$TMP/plain.sql"

# pgenrich binary $1, started with the embedded sentiment backend; waits until it answers.
start_pgenrich() {
    local extra=()
    read -r -a extra <<<"$EXTRA_PGENRICH_ARGS"
    "$1" --listen "127.0.0.1:$PGENRICH_PORT" --upstream "127.0.0.1:$PG_PORT" \
        --upstream-tls-mode disable --comprehend-backend local "${extra[@]}" \
        >>"$TMP/pgenrich.log" 2>&1 &
    PGENRICH_PID=$!
    local i answer
    for ((i = 0; i < 100; i++)); do
        answer=$("$PG_BIN/psql" -X -A -t -q -h 127.0.0.1 -p "$PGENRICH_PORT" -U postgres -d postgres \
            -c "SELECT (aws_comprehend.detect_sentiment('a good day', 'en')).sentiment" 2>/dev/null) || answer=""
        [[ $answer == POSITIVE ]] && return 0
        alive "$PGENRICH_PID" || break
        sleep 0.1
    done
    tail -n 20 "$TMP/pgenrich.log" >&2
    die "pgenrich ($1) did not answer an ML statement with POSITIVE"
}

# pgbench against port $1 with script $2 and $3 clients: "tps latency_ms", or FAIL.
bench() {
    local out
    out=$("$PG_BIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -n -f "$2" -c "$3" -j "$(($3 < 2 ? $3 : 2))" \
        -T "$DURATION" postgres 2>"$TMP/pgbench.err") || { echo FAIL; return; }
    local tps lat failed
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\).*/\1/p' <<<"$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    if [[ -z $tps || -z $lat || ${failed:-0} != 0 ]]; then echo FAIL; return; fi
    echo "$tps $lat"
}

declare -A RESULTS=()
FAILED=0
# Runs every workload of target $1 (label) on port $2, recording round $3.
measure() {
    local label=$1 port=$2 round=$3 workload script clients result
    for workload in plain ml; do
        [[ $label == direct && $workload == ml ]] && continue
        script=$TMP/$workload.sql
        for clients in "$CLIENTS" 1; do
            result=$(bench "$port" "$script" "$clients")
            [[ $result == FAIL ]] && FAILED=1
            RESULTS["$label|$workload|$clients"]+="$result;"
            log "round $round: $label $workload, $clients client(s): $result"
        done
    done
}

for ((round = 1; round <= ROUNDS; round++)); do
    measure direct "$PG_PORT" "$round"
    for bin in "${BINS[@]}"; do
        start_pgenrich "$bin"
        measure "$bin" "$PGENRICH_PORT" "$round"
        stop_pgenrich
    done
done

# Median of field $2 (1: tps, 2: latency) over the rounds of key $1.
med() {
    tr ';' '\n' <<<"${RESULTS[$1]}" | awk -v f="$2" 'NF && $1 != "FAIL" {print $f}' | median
}

report() {
    echo "## Small ML statements (one row, embedded sentiment backend)"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs; $ROUNDS interleaved rounds of ${DURATION} s per run, medians"
    echo "- ml: \`$(cat "$TMP/ml.sql")\`; plain: \`$(cat "$TMP/plain.sql")\`"
    echo
    echo "| target | statement | tps, $CLIENTS clients | ms per statement, 1 client |"
    echo "|---|---|--:|--:|"
    local label workload
    for label in direct "${BINS[@]}"; do
        for workload in plain ml; do
            [[ $label == direct && $workload == ml ]] && continue
            printf '| %s | %s | %s | %s |\n' "$label" "$workload" \
                "$(med "$label|$workload|$CLIENTS" 1 | awk '$1 != "NA" {printf "%.0f", $1; next} {print}')" \
                "$(med "$label|$workload|1" 2 | awk '$1 != "NA" {printf "%.3f", $1; next} {print}')"
        done
    done
}

REPORT=$(report)
echo "$REPORT"
[[ -n $OUT ]] && echo "$REPORT" >"$OUT"
exit "$FAILED"
