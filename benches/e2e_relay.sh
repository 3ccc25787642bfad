#!/usr/bin/env bash
# End-to-end relay benchmark: pgbench against a throw-away PostgreSQL
#   direct      pgbench -> PostgreSQL
#   pgbouncer   pgbench -> PgBouncer (session pooling) -> PostgreSQL
#   pgenrich    pgbench -> target/release/pgenrich      -> PostgreSQL
#
# Usage (from anywhere; the repo root is found from this file):
#   benches/e2e_relay.sh                 # ROUNDS=5 DURATION=10 (about 8 minutes after the build)
#   QUICK=1 benches/e2e_relay.sh         # ROUNDS=1 DURATION=3 smoke test
#   ROUNDS=3 DURATION=20 OUT=results.md benches/e2e_relay.sh
#
# Environment:
#   ROUNDS      interleaved rounds (default 5; 1 with QUICK=1)
#   DURATION    seconds per pgbench run (default 10; 3 with QUICK=1)
#   WARMUP      seconds per unrecorded warm-up run, per workload and target (default 2; 0 = none)
#   QUICK=1     smoke-test defaults (explicit ROUNDS/DURATION still win)
#   OUT=path    also write the Markdown results to this file
#   SKIP_BUILD=1  use the existing target/release/pgenrich instead of running cargo build --release
#   PGENRICH_ARGS extra pgenrich flags, split on spaces (e.g. "--worker-threads 1")
#   UPSTREAM_TLS=1  TLS between each proxy and PostgreSQL (a self-signed certificate made with
#                 openssl; PgBouncer server_tls_sslmode and pgenrich upstream_tls_mode "require");
#                 clients still connect in plain text, direct ones too
#
# Everything runs on 127.0.0.1 on free ports, in a mktemp -d directory that is removed on exit,
# together with every process the script started. Missing tools are installed with apt-get
# (root only). Exit status: 0 when every run succeeded, 1 when any run failed (the table is
# still printed, failed runs shown as FAIL), 2 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
OUT=${OUT:-}
UPSTREAM_TLS=${UPSTREAM_TLS:-0}
LARGE_ROWS=100000
TARGETS=(direct pgbouncer pgenrich)
WORKLOADS=(select-simple select-prepared large-result)

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

for var in ROUNDS DURATION WARMUP; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, got '${!var}'"
done
((ROUNDS >= 1)) || die "ROUNDS must be >= 1"
((DURATION >= 1)) || die "DURATION must be >= 1"

isolate_env

# ---------------------------------------------------------------------------------------------
# 1. Tools
# ---------------------------------------------------------------------------------------------
find_pgbouncer() {
    command -v pgbouncer 2>/dev/null || { [[ -x /usr/sbin/pgbouncer ]] && echo /usr/sbin/pgbouncer; }
}

INSTALL_CMD="apt-get update && apt-get install -y postgresql postgresql-contrib pgbouncer"
if ! find_pg_bin initdb pg_ctl postgres pgbench psql >/dev/null || ! find_pgbouncer >/dev/null; then
    if ((EUID != 0)); then
        log "PostgreSQL server tools, pgbench or pgbouncer are missing. Install them with:"
        echo "  sudo sh -c '$INSTALL_CMD'" >&2
        exit 1
    fi
    log "installing PostgreSQL, pgbench and PgBouncer: $INSTALL_CMD"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql postgresql-contrib pgbouncer >&2
fi
PG_BIN=$(find_pg_bin initdb pg_ctl postgres pgbench psql) || die "no /usr/lib/postgresql/<ver>/bin with initdb, pg_ctl, postgres, pgbench and psql"
PGBOUNCER=$(find_pgbouncer) || die "pgbouncer not found after installation"
export PATH="$PG_BIN:$PATH"
need_tools awk sort timeout runuser setsid

pick_run_as

# ---------------------------------------------------------------------------------------------
# 2. Build pgenrich (before anything is started: it is the slow part)
# ---------------------------------------------------------------------------------------------
PGENRICH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pgenrich"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 to use an existing $PGENRICH_BIN)"
    log "cargo build --release"
    cargo build --release --bin pgenrich >&2
fi
[[ -x $PGENRICH_BIN ]] || die "$PGENRICH_BIN does not exist"

# ---------------------------------------------------------------------------------------------
# Temp dir and cleanup
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/pgenrich-e2e.XXXXXX)
PGENRICH_PID=""
BENCH_PID=""
PG_STARTED=0
CLEANED=0

pgbouncer_pid() { [[ -s $TMP/pgbouncer.pid ]] && head -n 1 "$TMP/pgbouncer.pid"; }

cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM
    if alive "$BENCH_PID"; then
        kill -TERM "$BENCH_PID" 2>/dev/null
        wait_gone "$BENCH_PID" 5 || kill -KILL "$BENCH_PID" 2>/dev/null
    fi
    stop_pgenrich
    local pid
    pid=$(pgbouncer_pid)
    if alive "$pid"; then
        log "stopping pgbouncer (pid $pid)"
        kill -INT "$pid" 2>/dev/null                    # safe shutdown: no clients left by now
        if ! wait_gone "$pid" 5; then
            kill -TERM "$pid" 2>/dev/null
            wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null
        fi
    fi
    stop_postgres
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((EUID == 0)); then chown "$RUN_AS": "$TMP"; fi
chmod 755 "$TMP"
mkdir -p "$TMP/runs"

PG_PORT=$(free_port); USED_PORTS[$PG_PORT]=1
BOUNCER_PORT=$(free_port); USED_PORTS[$BOUNCER_PORT]=1
PGENRICH_PORT=$(free_port); USED_PORTS[$PGENRICH_PORT]=1
declare -A PORT=([direct]=$PG_PORT [pgbouncer]=$BOUNCER_PORT [pgenrich]=$PGENRICH_PORT)

# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL
# ---------------------------------------------------------------------------------------------
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (data in $TMP/data)"
init_trust_cluster
PG_OPTS="-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$TMP -c max_connections=100 -c shared_buffers=256MB"
UPSTREAM_MODE=disable
BOUNCER_TLS=disable
if [[ $UPSTREAM_TLS == 1 ]]; then
    command -v openssl >/dev/null || die "UPSTREAM_TLS=1 needs openssl (apt-get install -y openssl)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -keyout "$TMP/server.key" -out "$TMP/server.crt" >"$TMP/openssl.log" 2>&1 \
        || { cat "$TMP/openssl.log" >&2; die "openssl could not make a certificate"; }
    chmod 600 "$TMP/server.key"
    if ((EUID == 0)); then chown "$RUN_AS": "$TMP/server.key" "$TMP/server.crt"; fi
    PG_OPTS+=" -c ssl=on -c ssl_cert_file=$TMP/server.crt -c ssl_key_file=$TMP/server.key"
    UPSTREAM_MODE=require
    BOUNCER_TLS=require
    log "TLS between the proxies and PostgreSQL (self-signed certificate)"
fi
start_cluster "$PG_OPTS"

# psql SELECT 1 through the given port, retried for up to $2 seconds.
wait_ready() {
    local target=$1 timeout=$2 start=$SECONDS out
    while :; do
        if out=$("$PG_BIN/psql" -X -A -t -q -h 127.0.0.1 -p "${PORT[$target]}" -U postgres -d "dbname=postgres connect_timeout=2" \
                -c 'SELECT 1' 2>&1) && [[ $out == 1 ]]; then
            log "$target is ready on 127.0.0.1:${PORT[$target]}"
            return 0
        fi
        if [[ $target == pgenrich ]] && ! alive "$PGENRICH_PID"; then
            tail -n 30 "$TMP/pgenrich.log" >&2
            die "pgenrich exited during startup"
        fi
        if ((SECONDS - start >= timeout)); then
            log "last psql output via $target: $out"
            case $target in
                direct) tail -n 30 "$TMP/postgres.log" >&2 ;;
                pgbouncer) tail -n 30 "$TMP/pgbouncer.log" >&2 ;;
                pgenrich) tail -n 30 "$TMP/pgenrich.log" >&2 ;;
            esac
            die "$target did not accept connections on 127.0.0.1:${PORT[$target]} within ${timeout}s"
        fi
        sleep 0.5
    done
}
wait_ready direct 60

log "pgbench -i -s 10"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 10 -q postgres >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------------------------
# 3. PgBouncer, session pooling
# ---------------------------------------------------------------------------------------------
printf '"postgres" ""\n' >"$TMP/userlist.txt"
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
server_tls_sslmode = $BOUNCER_TLS
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
log "$("$PGBOUNCER" --version | head -n 1) on 127.0.0.1:$BOUNCER_PORT"
as_pg "$PGBOUNCER" -d "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.out" 2>&1 \
    || { cat "$TMP/pgbouncer.out" "$TMP/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }

# ---------------------------------------------------------------------------------------------
# 4. pgenrich
# ---------------------------------------------------------------------------------------------
log "pgenrich ($PGENRICH_BIN) on 127.0.0.1:$PGENRICH_PORT"
read -r -a EXTRA_ARGS <<<"$EXTRA_PGENRICH_ARGS"
# In a session of its own, as PostgreSQL (pg_ctl) and PgBouncer (-d) are: with the kernel's
# autogroup scheduling (sched_autogroup_enabled) CPU is shared between sessions first, and
# pgenrich must not compete inside pgbench's share while PgBouncer has one of its own. Started
# from this non-interactive shell it is no process-group leader, so setsid execs in place and $!
# stays pgenrich's pid.
RUST_LOG=warn setsid "$PGENRICH_BIN" --listen "127.0.0.1:$PGENRICH_PORT" --upstream "127.0.0.1:$PG_PORT" \
    --upstream-tls-mode "$UPSTREAM_MODE" "${EXTRA_ARGS[@]}" >"$TMP/pgenrich.log" 2>&1 </dev/null &
PGENRICH_PID=$!
sleep 0.2
if alive "$PGENRICH_PID" && [[ $(cat "/proc/$PGENRICH_PID/comm" 2>/dev/null) != pgenrich ]]; then
    die "pid $PGENRICH_PID is not pgenrich (did setsid fork?)"
fi

# ---------------------------------------------------------------------------------------------
# 5. Readiness
# ---------------------------------------------------------------------------------------------
wait_ready pgbouncer 30
wait_ready pgenrich 30

# ---------------------------------------------------------------------------------------------
# 6. Workloads
# ---------------------------------------------------------------------------------------------
printf 'SELECT * FROM pgbench_accounts LIMIT %d;\n' "$LARGE_ROWS" >"$TMP/large_result.sql"
chmod 644 "$TMP/large_result.sql"

workload_args() {
    case $1 in
        select-simple) echo "-S -c 8 -j 2 -M simple" ;;
        select-prepared) echo "-S -c 8 -j 2 -M prepared" ;;
        large-result) echo "-f $TMP/large_result.sql -c 1 -j 1" ;;
    esac
}
workload_unit() { [[ $1 == large-result ]] && echo "rows/s" || echo "tps"; }

FAILURES=0
# run_one WORKLOAD TARGET SECONDS LABEL -> sets RESULT to the metric (tps, or rows/s) or FAIL.
# (Not meant for $(...): pgbench runs as a job of this shell so that cleanup can stop it.)
RESULT=""
run_one() {
    local workload=$1 target=$2 secs=$3 label=$4 out rc=0 tps
    out="$TMP/runs/$label-$workload-$target.log"
    # shellcheck disable=SC2046  # word splitting of workload_args is intended
    timeout --kill-after=10 $((secs * 3 + 60)) \
        "$PG_BIN/pgbench" -n $(workload_args "$workload") -T "$secs" \
        -h 127.0.0.1 -p "${PORT[$target]}" -U postgres postgres >"$out" 2>&1 </dev/null &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    tps=$(awk '/^tps = .*without initial connection time/ {print $3; exit}' "$out")
    if ((rc != 0)) || [[ -z $tps ]]; then
        {
            log "FAILED: $workload via $target ($label): pgbench exit status $rc$( ((rc == 124)) && echo ' (timed out)')"
            sed 's/^/    | /' "$out" | tail -n 40
            if [[ $target == pgenrich ]] && ! alive "$PGENRICH_PID"; then
                log "pgenrich is no longer running; its log:"
                tail -n 40 "$TMP/pgenrich.log" | sed 's/^/    | /'
            fi
        } >&2
        RESULT=FAIL
        return 0
    fi
    if [[ $workload == large-result ]]; then
        RESULT=$(awk -v t="$tps" -v n="$LARGE_ROWS" 'BEGIN {printf "%.0f", t * n}')
    else
        RESULT=$tps
    fi
}

if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s per workload and target (not recorded)"
    for workload in "${WORKLOADS[@]}"; do
        for target in "${TARGETS[@]}"; do
            run_one "$workload" "$target" "$WARMUP" warmup
            if [[ $RESULT == FAIL ]]; then
                log "warm-up of $workload via $target failed (see above); continuing"
            fi
        done
    done
fi

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
ntargets=${#TARGETS[@]}
log "measuring: $ROUNDS round(s) x ${#WORKLOADS[@]} workloads x $ntargets targets x ${DURATION}s"
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((i = 0; i < ntargets; i++)); do order+=("${TARGETS[(i + round - 1) % ntargets]}"); done
    log "round $round/$ROUNDS, target order: ${order[*]}"
    for workload in "${WORKLOADS[@]}"; do
        for target in "${order[@]}"; do
            run_one "$workload" "$target" "$DURATION" "r$round"
            if [[ $RESULT == FAIL ]]; then FAILURES=$((FAILURES + 1)); fi
            printf '%s\t%s\t%s\t%s\n' "$round" "$workload" "$target" "$RESULT" >>"$RESULTS"
            log "  $workload via $target: $RESULT $(workload_unit "$workload")"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# 7. Results
# ---------------------------------------------------------------------------------------------
values() { awk -F'\t' -v w="$1" -v t="$2" '$2 == w && $3 == t && $4 != "FAIL" {print $4}' "$RESULTS"; }
fmt() { [[ $1 == NA || $1 == FAIL ]] && echo "$1" || awk -v x="$1" 'BEGIN {printf "%.0f", x}'; }
# pgenrich ÷ PgBouncer per round in which both runs succeeded, one per line.
paired_ratios() {
    awk -F'\t' -v w="$1" '$2 == w && $4 != "FAIL" && $3 == "pgbouncer" {b[$1] = $4}
        $2 == w && $4 != "FAIL" && $3 == "pgenrich" {e[$1] = $4}
        END {for (r in e) if ((r in b) && b[r] > 0) printf "%.6f\n", e[r] / b[r]}' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f×", a / b}'; }

report() {
    local commit dirty=""
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || dirty="+dirty"
    echo "## pgenrich end-to-end relay benchmark"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$dirty, $(nproc) CPUs"
    echo "- $("$PG_BIN/postgres" --version), $("$PGBOUNCER" --version | head -n 1) (pool_mode=session, server_tls_sslmode=$BOUNCER_TLS), pgenrich --upstream-tls-mode $UPSTREAM_MODE${EXTRA_PGENRICH_ARGS:+ $EXTRA_PGENRICH_ARGS}"
    echo "- pgbench -s 10; $ROUNDS round(s) × ${DURATION}s per run, interleaved, target order rotated each round; warm-up ${WARMUP}s"
    echo "- select-simple / select-prepared: \`pgbench -n -S -c 8 -j 2 -M simple|prepared\` (tps);" \
         "large-result: \`SELECT * FROM pgbench_accounts LIMIT $LARGE_ROWS\`, \`-c 1 -j 1\` (rows/s = tps × $LARGE_ROWS)"
    echo
    echo "### Medians (ratio = target median / direct median)"
    echo
    echo "| workload | unit | direct | pgbouncer | pgbouncer/direct | pgenrich | pgenrich/direct |"
    echo "|---|---|--:|--:|--:|--:|--:|"
    local workload target d b e
    for workload in "${WORKLOADS[@]}"; do
        d=$(values "$workload" direct | median)
        b=$(values "$workload" pgbouncer | median)
        e=$(values "$workload" pgenrich | median)
        echo "| $workload | $(workload_unit "$workload") | $(fmt "$d") | $(fmt "$b") | $(ratio "$b" "$d") | $(fmt "$e") | $(ratio "$e" "$d") |"
    done
    echo
    echo "### Paired: pgenrich ÷ PgBouncer within each round"
    echo
    echo "Both ran in the same round, seconds apart, so host-wide swings (the spreads below) largely"
    echo "cancel out of the per-round ratio."
    echo
    echo "| workload | median ratio | min | max | rounds pgenrich ≥ PgBouncer |"
    echo "|---|--:|--:|--:|--:|"
    local ratios
    for workload in "${WORKLOADS[@]}"; do
        ratios=$(paired_ratios "$workload")
        if [[ -z $ratios ]]; then
            echo "| $workload | NA | NA | NA | 0/0 |"
            continue
        fi
        echo "| $workload | $(echo "$ratios" | median | xargs printf '%.2f×') | $(echo "$ratios" | sort -g | head -n 1 | xargs printf '%.2f×') | $(echo "$ratios" | sort -g | tail -n 1 | xargs printf '%.2f×') | $(echo "$ratios" | awk '$1 >= 1 {n++} END {printf "%d/%d", n, NR}') |"
    done
    echo
    echo "### Raw per-round results (spread = (max − min) / median)"
    echo
    local header="| workload | target |" rule="|---|---|" r
    for ((r = 1; r <= ROUNDS; r++)); do header+=" r$r |"; rule+="--:|"; done
    echo "$header median | spread |"
    echo "$rule--:|--:|"
    local row v med spread
    for workload in "${WORKLOADS[@]}"; do
        for target in "${TARGETS[@]}"; do
            row="| $workload | $target |"
            for ((r = 1; r <= ROUNDS; r++)); do
                v=$(awk -F'\t' -v r="$r" -v w="$workload" -v t="$target" '$1 == r && $2 == w && $3 == t {print $4}' "$RESULTS")
                row+=" $(fmt "${v:-NA}") |"
            done
            med=$(values "$workload" "$target" | median)
            spread=$(values "$workload" "$target" | sort -g | awk -v m="$med" \
                'NR == 1 {lo = $1} {hi = $1} END {if (NR < 2 || m == "NA" || m == 0) print "-"; else printf "%.1f%%", 100 * (hi - lo) / m}')
            echo "$row $(fmt "$med") | $spread |"
        done
    done
    if ((FAILURES > 0)); then
        echo
        echo "**$FAILURES run(s) failed** (shown as FAIL, left out of the medians); pgbench output is on stderr."
    fi
}

REPORT=$(report)
echo
echo "$REPORT"
if [[ -n $OUT ]]; then
    printf '%s\n' "$REPORT" >"$OUT"
    log "results written to $OUT"
fi
if ((FAILURES > 0)); then
    log "$FAILURES run(s) failed"
    exit 1
fi
exit 0
