#!/usr/bin/env bash
# End-to-end fault and soak test (issue 16): pgenrich at its defaults under a long mixed load with
# faults everywhere around it, checked for lost or duplicated rows, wrong ML rows, memory growth,
# relay latency and survival.
#
#   - PLAIN (200) pass-through sessions: checked reads (simple and extended protocol), slow reads,
#     and BEGIN/INSERT/COMMIT transactions (extended protocol, and as one simple Query message)
#     into soak_rows, every key unique and recorded in a ledger;
#   - ML (40) sessions: streaming invoke_endpoint, residual `WHERE invoke_endpoint(...)::float8 > k`
#     and detect_sentiment statements over soak_ml, both protocols, every row checked against the
#     mock's models;
#   - PROBES (4) untouched sessions running SELECT 1 every PROBE_INTERVAL_MS, in a process of
#     their own (so the load generator's scheduling does not show up as proxy latency), and as
#     many again straight to PostgreSQL in another process, at the same moments: what the host's
#     load does to a SELECT 1 without pgenrich, beside what it does through it;
#   - mock-aws with latency + jitter, a throttling rate and a 5xx rate on for the whole run;
#   - PostgreSQL restarted once (pg_ctl restart -m fast) at RESTART_AT;
#   - plain and ML sessions killed at random points with probability KILL_RATE per operation
#     (connection dropped mid-query, mid-transaction, mid-COMMIT, mid-result), then reconnecting;
#     every session reconnects after errors. The client is examples/soak_client/.
#
# Measured: errors by SQLSTATE (or the client-side class for errors without one); lost, duplicated,
# unexpected and corrupt rows (the ledger against soak_rows, read straight from PostgreSQL after
# the run); ML rows wrong / missing / duplicated; pgenrich's VmRSS every RSS_SAMPLE_SECS (growth
# after warm-up); p50/p99 of the probes' SELECT 1 during the run against a quiet baseline (probes
# alone, BASELINE_SECS, before the load) and against the direct probes at the same moments; whether pgenrich still answers SELECT 1 and an ML
# statement at the end; upstream connections and file descriptors pgenrich holds once every
# client has gone.
#
# Targets: lost = duplicated = unexpected = corrupt = 0; ML rows wrong = missing = duplicated = 0;
# RSS flat after warm-up (growth <= RSS_FLAT_PCT %); probe p50 and p99 during the run <= 2x quiet;
# pgenrich survives. A missed target is reported, not an error.
#
# Usage (from anywhere; the repo root is found from this file):
#   benches/e2e_soak.sh                      # 600 s soak after a 20 s baseline (~13 min + build)
#   QUICK=1 benches/e2e_soak.sh              # 60 s soak, 10 s baseline
#   DURATION=300 OUT=soak.md SKIP_BUILD=1 benches/e2e_soak.sh
#
# Environment (defaults in brackets):
#   DURATION [600; 60 with QUICK=1]   seconds of load
#   BASELINE_SECS [20; 10]            seconds of the quiet probe baseline
#   RESTART_AT [DURATION/2]           seconds into the load when PostgreSQL is restarted
#   WARMUP_SECS [DURATION/5]          seconds of load before RSS counts as warmed up
#   PLAIN [200] ML [40] PROBES [4]    sessions per role
#   KILL_RATE [0.02]                  probability per plain/ML operation of a deliberate kill
#   PLAIN_THINK_MS [200] ML_THINK_MS [500]   mean pause between a session's operations
#   PROBE_INTERVAL_MS [10]            pause between a probe session's SELECT 1s
#   ML_ROWS [100000] ML_MAX_RANGE [2000]     rows of soak_ml; most rows per ML statement
#   MOCK_LATENCY_MS [20] MOCK_JITTER_MS [30] THROTTLE_RATE [0.05] ERROR_RATE [0.02]  mock-aws faults
#   SEED [1]                          seed of the mock's faults and the clients' choices
#   OP_TIMEOUT [60]                   seconds one client operation may take (then: timeout)
#   RSS_SAMPLE_SECS [5] RSS_FLAT_PCT [10]
#   OUT=path        also write the Markdown results to this file
#   LOGS_DIR=path   keep the logs (pgenrich, PostgreSQL, mock-aws, clients, samples) there
#   SKIP_BUILD=1    use the existing release binaries instead of running cargo build --release
#   DIRECT=1        control run: the clients connect straight to PostgreSQL (no ML sessions), to
#                   tell which errors and latencies PostgreSQL's restart causes by itself
#   PGENRICH_ARGS   extra pgenrich flags, split on spaces (none by default: pgenrich runs at its
#                   defaults, with only --listen, --upstream, --upstream-tls-mode disable,
#                   --aws-region and the two mock-aws endpoint URLs)
#
# Everything runs on 127.0.0.1 on free ports, in a mktemp -d directory that is removed on exit
# together with every process the script started; the binaries run from copies in it. PostgreSQL
# uses trust authentication; as root it runs as postgres. Exit status: 0 when the run happened
# (targets met or not), 1 when a client produced no summary, 2 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION=${DURATION:-60}
    BASELINE_SECS=${BASELINE_SECS:-10}
fi
DURATION=${DURATION:-600}
BASELINE_SECS=${BASELINE_SECS:-20}
RESTART_AT=${RESTART_AT:-$((DURATION / 2))}
WARMUP_SECS=${WARMUP_SECS:-$((DURATION / 5))}
PLAIN=${PLAIN:-200}
ML=${ML:-40}
PROBES=${PROBES:-4}
KILL_RATE=${KILL_RATE:-0.02}
PLAIN_THINK_MS=${PLAIN_THINK_MS:-200}
ML_THINK_MS=${ML_THINK_MS:-500}
PROBE_INTERVAL_MS=${PROBE_INTERVAL_MS:-10}
ML_ROWS=${ML_ROWS:-100000}
ML_MAX_RANGE=${ML_MAX_RANGE:-2000}
MOCK_LATENCY_MS=${MOCK_LATENCY_MS:-20}
MOCK_JITTER_MS=${MOCK_JITTER_MS:-30}
THROTTLE_RATE=${THROTTLE_RATE:-0.05}
ERROR_RATE=${ERROR_RATE:-0.02}
SEED=${SEED:-1}
OP_TIMEOUT=${OP_TIMEOUT:-60}
RSS_SAMPLE_SECS=${RSS_SAMPLE_SECS:-5}
RSS_FLAT_PCT=${RSS_FLAT_PCT:-10}
OUT=${OUT:-}
LOGS_DIR=${LOGS_DIR:-}
DIRECT=${DIRECT:-0}
((DIRECT)) && ML=0
TARGET_PROBE_RATIO=2

log() { printf '[e2e-soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
# A command that fails outside a condition ends the run (set -e): say which, instead of stopping
# without a word.
set -E
trap 'log "ERROR: line $LINENO: \"$BASH_COMMAND\" failed (exit status $?)"' ERR
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

for var in DURATION BASELINE_SECS RESTART_AT WARMUP_SECS PLAIN ML PROBES PLAIN_THINK_MS ML_THINK_MS \
           PROBE_INTERVAL_MS ML_ROWS ML_MAX_RANGE MOCK_LATENCY_MS MOCK_JITTER_MS SEED OP_TIMEOUT \
           RSS_SAMPLE_SECS RSS_FLAT_PCT; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, got '${!var}'"
done
for var in KILL_RATE THROTTLE_RATE ERROR_RATE; do
    [[ ${!var} =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "$var must be a fraction between 0 and 1, got '${!var}'"
done
((DURATION >= 20)) || die "DURATION must be >= 20"
((BASELINE_SECS >= 5)) || die "BASELINE_SECS must be >= 5"
((PROBES >= 1)) || die "PROBES must be >= 1"
((RESTART_AT >= 1 && RESTART_AT < DURATION)) || die "RESTART_AT must be within the load (1..DURATION-1)"
((WARMUP_SECS < DURATION - 2 * RSS_SAMPLE_SECS)) || die "WARMUP_SECS leaves no RSS samples after warm-up"
((RSS_SAMPLE_SECS >= 1)) || die "RSS_SAMPLE_SECS must be >= 1"
((ML_ROWS >= ML_MAX_RANGE && ML_MAX_RANGE >= 1)) || die "need ML_ROWS >= ML_MAX_RANGE >= 1"

isolate_env

# ---------------------------------------------------------------------------------------------
# 1. Tools and build
# ---------------------------------------------------------------------------------------------
PG_BIN=$(find_pg_bin initdb pg_ctl postgres psql) || die "no /usr/lib/postgresql/<ver>/bin with initdb pg_ctl postgres psql; install it with: apt-get install -y postgresql"
need_tools awk sort timeout runuser setsid
pick_run_as

RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PGENRICH_BIN=$RELEASE/pgenrich
MOCK_BIN=$RELEASE/mock-aws
CLIENT_BIN=$RELEASE/examples/soak_client
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 to use existing binaries)"
    log "cargo build --release (pgenrich, soak_client, mock-aws)"
    cargo build --release -p pgenrich --bin pgenrich --example soak_client >&2
    cargo build --release -p mock-aws --bin mock-aws >&2
fi
for bin in "$PGENRICH_BIN" "$MOCK_BIN" "$CLIENT_BIN"; do
    [[ -x $bin ]] || die "$bin does not exist"
done

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/pgenrich-e2e-soak.XXXXXX)
PGENRICH_PID=""
MOCK_PID=""
LOAD_PID=""
PROBE_PID=""
DPROBE_PID=""
SAMPLER_PID=""
PG_STARTED=0
CLEANED=0

stop_pid() { # PID SIGNAL SECONDS: signal, wait, then SIGKILL
    alive "$1" || return 0
    kill -"$2" "$1" 2>/dev/null || true                    # it may have exited since
    wait_gone "$1" "$3" || kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

keep_logs() {
    [[ -n $LOGS_DIR ]] || return 0
    mkdir -p "$LOGS_DIR" && cp -r "$TMP"/*.log "$TMP"/*.out "$TMP"/*.err "$TMP"/*.samples "$TMP"/*.txt "$LOGS_DIR"/ 2>/dev/null
    log "logs kept in $LOGS_DIR"
}

cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM
    stop_pid "$LOAD_PID" TERM 5
    stop_pid "$PROBE_PID" TERM 5
    stop_pid "$DPROBE_PID" TERM 5
    stop_pid "$SAMPLER_PID" TERM 2
    stop_pgenrich
    stop_mock
    stop_postgres
    keep_logs
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((EUID == 0)); then chown "$RUN_AS": "$TMP"; fi
chmod 755 "$TMP"
mkdir -p "$TMP/bin"
# Run copies, so that a cargo build elsewhere cannot swap a binary during the run.
cp "$PGENRICH_BIN" "$MOCK_BIN" "$CLIENT_BIN" "$TMP/bin/"
PGENRICH_BIN=$TMP/bin/pgenrich
MOCK_BIN=$TMP/bin/mock-aws
CLIENT_BIN=$TMP/bin/soak_client

# Free loopback ports outside the usual ephemeral range; a port counts as free when nothing
# accepts a connection on it.
declare -A USED_PORTS=()
PORT=""
next_port() {
    local port i
    for ((i = 0; i < 500; i++)); do
        port=$((20000 + RANDOM % 10000))
        [[ -n ${USED_PORTS[$port]:-} ]] && continue
        USED_PORTS[$port]=1
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            PORT=$port
            return 0
        fi
    done
    die "no free loopback port found"
}

psql_at() { # PORT, then psql arguments
    local port=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "dbname=postgres connect_timeout=5" "$@"
}

# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL (trust authentication) and the tables
# ---------------------------------------------------------------------------------------------
next_port; PG_PORT=$PORT
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
MAX_CONN=$((PLAIN + ML + 2 * PROBES + 60))
log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (max_connections $MAX_CONN, data in $TMP/data)"
init_trust_cluster
# fsync off spares the shared disk; it changes nothing for a clean (fast) shutdown and restart,
# which writes everything out. synchronous_commit stays on: an acknowledged COMMIT is in the WAL.
start_cluster "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$TMP -c max_connections=$MAX_CONN -c shared_buffers=128MB -c fsync=off -c full_page_writes=off"
PG_CONN="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres sslmode=disable"

log "creating soak_kv, soak_ml ($ML_ROWS rows), soak_rows"
"$CLIENT_BIN" --setup "$PG_CONN" --ml-rows "$ML_ROWS" >"$TMP/setup.out" 2>&1 \
    || { cat "$TMP/setup.out" >&2; die "creating the tables failed"; }

# ---------------------------------------------------------------------------------------------
# 3. mock-aws with faults, pgenrich at its defaults
# ---------------------------------------------------------------------------------------------
next_port; MOCK_PORT=$PORT
# pgenrich and mock-aws each run in a session of their own, as PostgreSQL does (pg_ctl): with the
# kernel's autogroup scheduling (sched_autogroup_enabled) CPU is shared between sessions first,
# and a deployed pgenrich is a service of its own, not a part of its clients' (or PostgreSQL's)
# share, as it would be in this script's session. Started from this non-interactive shell they are
# no process-group leaders, so setsid execs in place and $! stays their pid.
setsid "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --latency-ms "$MOCK_LATENCY_MS" --latency-jitter-ms "$MOCK_JITTER_MS" \
    --throttle-rate "$THROTTLE_RATE" --error-rate "$ERROR_RATE" --seed "$SEED" \
    >"$TMP/mock.out" 2>"$TMP/mock.err" </dev/null &
MOCK_PID=$!
for ((i = 0; i < 100; i++)); do
    grep -q 'mock-aws listening on' "$TMP/mock.out" 2>/dev/null && break
    alive "$MOCK_PID" || break
    sleep 0.1
done
grep -q 'mock-aws listening on' "$TMP/mock.out" 2>/dev/null \
    || { cat "$TMP/mock.out" "$TMP/mock.err" >&2; die "mock-aws did not start on 127.0.0.1:$MOCK_PORT"; }
log "$(head -n 1 "$TMP/mock.out")"

next_port; PGENRICH_PORT=$PORT
read -r -a PGENRICH_FLAGS <<<"$EXTRA_PGENRICH_ARGS"
AWS_ACCESS_KEY_ID=soak AWS_SECRET_ACCESS_KEY=soak AWS_EC2_METADATA_DISABLED=true RUST_LOG=warn \
    setsid "$PGENRICH_BIN" --listen "127.0.0.1:$PGENRICH_PORT" --upstream "127.0.0.1:$PG_PORT" \
    --upstream-tls-mode disable --aws-region us-east-1 \
    --sagemaker-endpoint-url "http://127.0.0.1:$MOCK_PORT" \
    --comprehend-endpoint-url "http://127.0.0.1:$MOCK_PORT" \
    "${PGENRICH_FLAGS[@]}" >"$TMP/pgenrich.log" 2>&1 </dev/null &
PGENRICH_PID=$!
sleep 0.2
for pid in "$MOCK_PID" "$PGENRICH_PID"; do
    alive "$pid" || continue
    case $(cat "/proc/$pid/comm" 2>/dev/null) in
        pgenrich | mock-aws) ;;
        *) die "pid $pid is not pgenrich or mock-aws (did setsid fork?)" ;;
    esac
done
start=$SECONDS
until out=$(psql_at "$PGENRICH_PORT" -A -t -c 'SELECT 1' 2>&1) && [[ $out == 1 ]]; do
    alive "$PGENRICH_PID" || { tail -n 30 "$TMP/pgenrich.log" >&2; die "pgenrich exited during startup"; }
    ((SECONDS - start < 30)) || { tail -n 30 "$TMP/pgenrich.log" >&2; die "pgenrich did not accept connections within 30 s: $out"; }
    sleep 0.2
done
PGENRICH_CONN="host=127.0.0.1 port=$PGENRICH_PORT user=postgres dbname=postgres sslmode=disable connect_timeout=10"
CLIENT_CONN=$PGENRICH_CONN
((DIRECT)) && CLIENT_CONN="$PG_CONN connect_timeout=10"

# Both ML functions once (builds the SDK clients); the mock's faults may fail one attempt.
ML_CHECK_SQL="SELECT aws_sagemaker.invoke_endpoint('score', NULL, 1, 2) || ' ' || (aws_comprehend.detect_sentiment('good', 'en')).sentiment"
ml_check() { # -> 0 when an ML statement through pgenrich answers right (up to 5 tries)
    local try out
    for ((try = 1; try <= 5; try++)); do
        out=$(psql_at "$PGENRICH_PORT" -A -t -c "$ML_CHECK_SQL" 2>&1) || true
        [[ $out == "3 POSITIVE" ]] && return 0
        sleep 1
    done
    log "ML statement through pgenrich: $out"
    return 1
}
ml_check || die "the warm-up ML statement failed 5 times"
log "pgenrich on 127.0.0.1:$PGENRICH_PORT (pid $PGENRICH_PID), warmed up"

proc_field() { # PID FIELD -> value (kB for Vm*) from /proc/PID/status, or NA
    local v=""
    [[ -r /proc/$1/status ]] && v=$(awk -v f="$2:" '$1 == f {print $2; exit}' "/proc/$1/status" 2>/dev/null)
    echo "${v:-NA}"
}
fd_count() { [[ -d /proc/$1/fd ]] && find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || echo NA; }
cpu_ticks() { [[ -r /proc/$1/stat ]] && awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" || echo NA; }
# PostgreSQL's CPU ticks so far: the postmaster's own and its reaped children's, plus the live
# children's (a restart starts a new postmaster, so it is read before and after the restart).
pg_ticks() {
    local pm
    pm=$(postmaster_pid) || { echo NA; return; }
    # Processes come and go while cat reads them: its complaints are expected.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '{pid = $1; sub(/^.*\) /, "")}
        pid == pm {n += $12 + $13 + $14 + $15} $2 == pm {n += $12 + $13} END {print n + 0}'
}
host_ticks() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6}' /proc/stat; }

# Samples "unix_time VmRSS_kB fds threads cpu_ticks" of pgenrich every RSS_SAMPLE_SECS; a line
# "unix_time GONE" when the process has gone.
start_sampler() {
    local pid=$PGENRICH_PID file=$TMP/rss.samples
    : >"$file"
    (
        set +e
        trap 'exit 0' TERM
        while :; do
            if [[ ! -r /proc/$pid/status ]] || grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
                echo "$EPOCHREALTIME GONE" >>"$file"
                break
            fi
            echo "$EPOCHREALTIME $(proc_field "$pid" VmRSS) $(fd_count "$pid") $(proc_field "$pid" Threads) $(cpu_ticks "$pid")" >>"$file"
            sleep "$RSS_SAMPLE_SECS"
        done
    ) &
    SAMPLER_PID=$!
}

IDLE_RSS=$(proc_field "$PGENRICH_PID" VmRSS)
IDLE_FDS=$(fd_count "$PGENRICH_PID")

# ---------------------------------------------------------------------------------------------
# 4. Quiet baseline: the probes alone
# ---------------------------------------------------------------------------------------------
COMMON_ARGS=(--conn "$CLIENT_CONN" --seed "$SEED" --op-timeout "$OP_TIMEOUT" --ml-rows "$ML_ROWS"
             --ml-max-range "$ML_MAX_RANGE" --probe-interval-ms "$PROBE_INTERVAL_MS")
# The direct probes (straight to PostgreSQL) run beside the others, quiet and during the soak;
# not in a DIRECT=1 run, where every client is direct.
DPROBE=$((DIRECT ? 0 : 1))
((DPROBE)) || : >"$TMP/dprobe.out"   # the report reads it either way
start_direct_probes() { # SECONDS SAMPLES_FILE OUT_FILE
    ((DPROBE)) || return 0
    timeout --kill-after=10 $(($1 + OP_TIMEOUT + 120)) "$CLIENT_BIN" "${COMMON_ARGS[@]}" \
        --conn "$PG_CONN connect_timeout=10" --probe "$PROBES" --threads 1 --duration "$1" \
        --probe-out "$2" >"$3" 2>"${3%.out}.err" </dev/null &
    DPROBE_PID=$!
}
wait_direct_probes() { # -> exit status of the direct probe process (0 when there is none)
    local rc=0
    [[ -n $DPROBE_PID ]] || return 0
    wait "$DPROBE_PID" || rc=$?
    DPROBE_PID=""
    return "$rc"
}
read -r BASE_BUSY0 BASE_TOTAL0 < <(host_ticks)
log "quiet baseline: $PROBES probe sessions (and $((DPROBE * PROBES)) straight to PostgreSQL), SELECT 1 every $PROBE_INTERVAL_MS ms, ${BASELINE_SECS} s"
start_direct_probes "$BASELINE_SECS" "$TMP/dbaseline.samples" "$TMP/dbaseline.out"
timeout --kill-after=10 $((BASELINE_SECS + OP_TIMEOUT + 30)) "$CLIENT_BIN" "${COMMON_ARGS[@]}" \
    --probe "$PROBES" --threads 1 --duration "$BASELINE_SECS" --probe-out "$TMP/baseline.samples" \
    >"$TMP/baseline.out" 2>"$TMP/baseline.err" </dev/null \
    || { cat "$TMP/baseline.err" >&2; die "the baseline probe run failed"; }
wait_direct_probes || { cat "$TMP/dbaseline.err" >&2; die "the direct baseline probe run failed"; }
read -r BASE_BUSY1 BASE_TOTAL1 < <(host_ticks)
# The host's CPU during the baseline (one CPU = 100 %): anything else running skews "quiet".
BASE_HOST_PCT=$(awk -v b0="$BASE_BUSY0" -v t0="$BASE_TOTAL0" -v b1="$BASE_BUSY1" -v t1="$BASE_TOTAL1" -v n="$(nproc)" 'BEGIN {printf "%.0f", (b1 - b0) / (t1 - t0) * 100 * n}')

# ---------------------------------------------------------------------------------------------
# 5. The soak: load + probes, PostgreSQL restarted at RESTART_AT
# ---------------------------------------------------------------------------------------------
# CPU: the host's, pgenrich's and mock-aws's ticks from /proc; the clients' from the shell's
# `times` (children reaped so far), before and after.
times_children() { times | tail -n 1 | awk '{n = 0; for (i = 1; i <= 2; i++) {split($i, p, "m"); n += p[1] * 60 + p[2]}; print n}'; }
times >"$TMP/times0.txt"
read -r HOST_BUSY0 HOST_TOTAL0 < <(host_ticks)
CPU0=$(cpu_ticks "$PGENRICH_PID")
MOCK_CPU0=$(cpu_ticks "$MOCK_PID")
PG_CPU0=$(pg_ticks)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_sampler
CLIENT_TIMEOUT=$((DURATION + OP_TIMEOUT + 120))
log "soak: $PLAIN plain + $ML ML sessions (kill rate $KILL_RATE) and $PROBES probes for ${DURATION} s; PostgreSQL restart at ${RESTART_AT} s"
SOAK_T0=$EPOCHREALTIME
timeout --kill-after=10 "$CLIENT_TIMEOUT" "$CLIENT_BIN" "${COMMON_ARGS[@]}" \
    --plain "$PLAIN" --ml "$ML" --kill-rate "$KILL_RATE" --duration "$DURATION" \
    --plain-think-ms "$PLAIN_THINK_MS" --ml-think-ms "$ML_THINK_MS" --verify "$PG_CONN" \
    >"$TMP/load.out" 2>"$TMP/load.err" </dev/null &
LOAD_PID=$!
timeout --kill-after=10 "$CLIENT_TIMEOUT" "$CLIENT_BIN" "${COMMON_ARGS[@]}" \
    --probe "$PROBES" --threads 1 --duration "$DURATION" --probe-out "$TMP/soak.samples" \
    >"$TMP/probe.out" 2>"$TMP/probe.err" </dev/null &
PROBE_PID=$!
start_direct_probes "$DURATION" "$TMP/dsoak.samples" "$TMP/dprobe.out"

sleep "$RESTART_AT"
log "restarting PostgreSQL (pg_ctl restart -m fast)"
PG_CPU_A=$(pg_ticks)
RESTART_T0=$EPOCHREALTIME
RESTART_OK=yes
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -m fast -w -t 60 restart >"$TMP/restart.txt" 2>&1 \
    || { RESTART_OK=no; log "pg_ctl restart failed:"; cat "$TMP/restart.txt" >&2; }
RESTART_T1=$EPOCHREALTIME
PG_CPU_B=$(pg_ticks)
log "PostgreSQL back after $(awk -v a="$RESTART_T0" -v b="$RESTART_T1" 'BEGIN {printf "%.1f", b - a}') s"

LOAD_RC=0
PROBE_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
LOAD_PID=""
wait "$PROBE_PID" || PROBE_RC=$?
PROBE_PID=""
DPROBE_RC=0
wait_direct_probes || DPROBE_RC=$?
SOAK_T1=$EPOCHREALTIME
read -r HOST_BUSY1 HOST_TOTAL1 < <(host_ticks)
CPU1=$(cpu_ticks "$PGENRICH_PID")
MOCK_CPU1=$(cpu_ticks "$MOCK_PID")
PG_CPU1=$(pg_ticks)
times >"$TMP/times1.txt"
CLIENT_CPU_S=$(awk 'NR == FNR {if (FNR == 2) a = $0; next} FNR == 2 {b = $0}
    END {split(a, x, " "); split(b, y, " "); t = 0
         for (i = 1; i <= 2; i++) {split(x[i], p, "m"); split(y[i], q, "m"); t += (q[1] * 60 + q[2]) - (p[1] * 60 + p[2])}
         printf "%.0f", t}' "$TMP/times0.txt" "$TMP/times1.txt")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
log "load client exit status $LOAD_RC, probe client $PROBE_RC, direct probe client $DPROBE_RC"

# ---------------------------------------------------------------------------------------------
# 6. After the load: survival, leftovers
# ---------------------------------------------------------------------------------------------
running() { [[ -n ${1:-} && -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
SURVIVED=no
SELECT1_END=no
ML_END=no
if running "$PGENRICH_PID"; then
    SURVIVED=yes
    out=$(psql_at "$PGENRICH_PORT" -A -t -c 'SELECT 1' 2>&1) && [[ $out == 1 ]] && SELECT1_END=yes
    ml_check && ML_END=yes
    # Every client has gone: after a moment pgenrich should hold no upstream connection.
    sleep 5
    LEFT_UPSTREAM=$(psql_at "$PG_PORT" -A -t -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" 2>/dev/null || echo NA)
    END_RSS=$(proc_field "$PGENRICH_PID" VmRSS)
    END_FDS=$(fd_count "$PGENRICH_PID")
    HWM=$(proc_field "$PGENRICH_PID" VmHWM)
else
    LEFT_UPSTREAM=NA END_RSS=NA END_FDS=NA HWM=NA
    wait "$PGENRICH_PID" 2>/dev/null && PGENRICH_EXIT=0 || PGENRICH_EXIT=$?
    log "pgenrich is no longer running (exit status ${PGENRICH_EXIT:-?}); last log lines:"
    tail -n 40 "$TMP/pgenrich.log" | sed 's/^/    | /' >&2
    PGENRICH_PID=""
fi
stop_pid "$SAMPLER_PID" TERM 2
SAMPLER_PID=""
stop_pgenrich
stop_pid "$MOCK_PID" INT 5
MOCK_PID=""
sed -i 's/\x1b\[[0-9;]*m//g' "$TMP/pgenrich.log"
PANICS=$(grep -c 'panicked' "$TMP/pgenrich.log" || true)
LOG_ERRORS=$(grep -c ' ERROR ' "$TMP/pgenrich.log" || true)
LOG_WARNS=$(grep -c ' WARN ' "$TMP/pgenrich.log" || true)

[[ -s $TMP/load.out ]] || { tail -n 30 "$TMP/load.err" >&2; log "the load client printed no summary"; }

# ---------------------------------------------------------------------------------------------
# 7. Results
# ---------------------------------------------------------------------------------------------
kvf() { # FILE KEY -> value of KEY=value, or NA
    awk -F= -v k="$2" '$1 == k {print $2; found = 1; exit} END {if (!found) print "NA"}' "$1" 2>/dev/null || echo NA
}
sumkv() { # FILE PREFIX SUFFIX -> sum of the values of keys PREFIX*SUFFIX
    awk -F= -v p="$2" -v s="$3" 'index($1, p) == 1 && substr($1, length($1) - length(s) + 1) == s {n += $2} END {print n + 0}' "$1" 2>/dev/null || echo 0
}
pct() { # FILE P -> nearest-rank percentile of column 2 (µs), or NA
    awk '{print $2}' "$1" | sort -n | awk -v p="$2" '{a[NR] = $1} END {
        if (NR == 0) {print "NA"; exit}
        r = int(p * NR); if (r < p * NR) r++; if (r < 1) r = 1; print a[r] }'
}
window() { # FILE FROM_MS TO_MS -> the samples in [FROM, TO)
    awk -v f="$2" -v t="$3" '$1 >= f && $1 < t' "$1"
}
ms() { [[ $1 == NA ]] && echo NA || awk -v u="$1" 'BEGIN {printf "%.2f ms", u / 1000}'; }
ratio() { [[ $1 == NA || $2 == NA || $2 == 0 ]] && echo NA || awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mb() { [[ $1 == NA ]] && echo NA || awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }
to_ms() { awk -v t="$1" 'BEGIN {printf "%.0f", t * 1000}'; }
yesno() { [[ $1 == 1 ]] && echo "yes" || echo "**no**"; }
num() { [[ $1 == NA ]] && echo NA || awk -v x="$1" 'BEGIN {printf "%.0f", x}' | sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta'; }

LOAD=$TMP/load.out
ELAPSED=$(awk -v a="$SOAK_T0" -v b="$SOAK_T1" 'BEGIN {printf "%.0f", b - a}')
RESTART_MS0=$(to_ms "$RESTART_T0")
RESTART_MS1=$(to_ms "$RESTART_T1")
SOAK_MS0=$(to_ms "$SOAK_T0")
# Probe phases: the restart window is from the restart to 10 s after PostgreSQL is back.
AFTER_RESTART_MS=$((RESTART_MS1 + 10000))
for p in "" d; do
    [[ -z $p ]] || ((DPROBE)) || continue
    window "$TMP/${p}soak.samples" 0 "$RESTART_MS0" >"$TMP/${p}phase-before.samples"
    window "$TMP/${p}soak.samples" "$RESTART_MS0" "$AFTER_RESTART_MS" >"$TMP/${p}phase-restart.samples"
    window "$TMP/${p}soak.samples" "$AFTER_RESTART_MS" 99999999999999 >"$TMP/${p}phase-after.samples"
done
Q50=$(pct "$TMP/baseline.samples" 0.5)
Q99=$(pct "$TMP/baseline.samples" 0.99)
S50=$(pct "$TMP/soak.samples" 0.5)
S99=$(pct "$TMP/soak.samples" 0.99)
R50=$(ratio "$S50" "$Q50")
R99=$(ratio "$S99" "$Q99")
# The same for the direct probes, and what pgenrich adds at the same moments.
DQ50=NA DQ99=NA DS50=NA DS99=NA
if ((DPROBE)); then
    DQ50=$(pct "$TMP/dbaseline.samples" 0.5)
    DQ99=$(pct "$TMP/dbaseline.samples" 0.99)
    DS50=$(pct "$TMP/dsoak.samples" 0.5)
    DS99=$(pct "$TMP/dsoak.samples" 0.99)
fi
# Longest time without a successful probe (any session) around the restart.
PROBE_GAP=$(sort -n "$TMP/soak.samples" | awk -v f="$((RESTART_MS0 - 5000))" -v t="$((AFTER_RESTART_MS + 60000))" '
    $1 >= f && $1 <= t {if (prev && $1 - prev > gap) gap = $1 - prev; prev = $1} END {printf "%.1f", gap / 1000}')

# RSS after warm-up: the median of the first and of the last quarter of the samples after
# WARMUP_SECS, their difference relative to the first (growth), and the least-squares slope.
WARM_T=$(awk -v t="$SOAK_T0" -v w="$WARMUP_SECS" 'BEGIN {printf "%.3f", t + w}')
awk -v w="$WARM_T" -v end="$SOAK_T1" '$2 != "GONE" && $1 >= w && $1 <= end {print $1, $2}' "$TMP/rss.samples" >"$TMP/rss-warm.txt"
RSS_N=$(wc -l <"$TMP/rss-warm.txt")
if ((RSS_N >= 4)); then
    RSS_FIRST=$(head -n $((RSS_N / 4)) "$TMP/rss-warm.txt" | awk '{print $2}' | median)
    RSS_LAST=$(tail -n $((RSS_N / 4)) "$TMP/rss-warm.txt" | awk '{print $2}' | median)
    RSS_SLOPE=$(awk '{t[NR] = $1; r[NR] = $2; sx += $1; sy += $2} END {
        mx = sx / NR; my = sy / NR
        for (i = 1; i <= NR; i++) {sxy += (t[i] - mx) * (r[i] - my); sxx += (t[i] - mx) ^ 2}
        printf "%+.2f", (sxx > 0 ? sxy / sxx * 60 / 1024 : 0) }' "$TMP/rss-warm.txt")
else
    RSS_FIRST=NA RSS_LAST=NA RSS_SLOPE=NA
fi
if [[ $RSS_FIRST != NA ]]; then
    RSS_GROWTH=$(awk -v a="$RSS_FIRST" -v b="$RSS_LAST" 'BEGIN {printf "%+.1f", (b - a) / a * 100}')
    RSS_FLAT=$(awk -v g="$RSS_GROWTH" -v l="$RSS_FLAT_PCT" 'BEGIN {print (g <= l) ? 1 : 0}')
else
    RSS_GROWTH=NA RSS_FLAT=0
fi
RSS_MAX=$(awk '$2 != "GONE" && $2 > m {m = $2} END {print m ? m : "NA"}' "$TMP/rss.samples")
GONE_AT=$(awk -v t0="$SOAK_T0" '$2 == "GONE" {printf "%.0f", $1 - t0}' "$TMP/rss.samples")

# Host and pgenrich CPU over the soak.
HOST_BUSY_PCT=$(awk -v b0="$HOST_BUSY0" -v t0="$HOST_TOTAL0" -v b1="$HOST_BUSY1" -v t1="$HOST_TOTAL1" 'BEGIN {printf "%.0f", (b1 - b0) / (t1 - t0) * 100}')
HZ=$(getconf CLK_TCK)
cpu_pct() { [[ $1 != NA && $2 != NA ]] && awk -v a="$1" -v b="$2" -v hz="$HZ" -v s="$ELAPSED" 'BEGIN {printf "%.0f", (b - a) / hz / s * 100}' || echo NA; }
PGENRICH_CPU_PCT=$(cpu_pct "$CPU0" "$CPU1")
MOCK_CPU_PCT=$(cpu_pct "$MOCK_CPU0" "$MOCK_CPU1")
PG_CPU_PCT=NA
if [[ $PG_CPU0 != NA && $PG_CPU_A != NA && $PG_CPU_B != NA && $PG_CPU1 != NA ]]; then
    PG_CPU_PCT=$(cpu_pct 0 $((PG_CPU_A - PG_CPU0 + PG_CPU1 - PG_CPU_B)))
fi
CLIENT_CPU_PCT=$(awk -v c="$CLIENT_CPU_S" -v s="$ELAPSED" 'BEGIN {printf "%.0f", c / s * 100}')

MOCK_SUMMARY=$(grep 'peak concurrency' "$TMP/mock.err" 2>/dev/null | sed 's/^mock-aws: //' || true)

# Error classes that the faults of this run explain.
explain() {
    case $1 in
        57P01) echo "admin_shutdown: PostgreSQL's fast shutdown terminated the session (restart)" ;;
        57P02) echo "crash_shutdown" ;;
        57P03) echo "cannot_connect_now: PostgreSQL starting up or shutting down (restart)" ;;
        08006) echo "connection_failure: pgenrich lost or could not reach PostgreSQL (restart)" ;;
        08003) echo "connection_does_not_exist" ;;
        08P01) echo "protocol_violation" ;;
        53000) echo "insufficient_resources: pgenrich, inference throttled past the retry budget" ;;
        38000) echo "external_routine_exception: pgenrich, inference 5xx after retries" ;;
        57014) echo "query_canceled: inference timeout or cancel" ;;
        58000) echo "system_error: pgenrich, inference service unreachable" ;;
        53200) echo "out_of_memory: pgenrich's max_ml_memory used up" ;;
        53300) echo "too_many_connections" ;;
        25P02) echo "in_failed_sql_transaction" ;;
        XX000) echo "internal_error" ;;
        closed) echo "connection closed with no error message" ;;
        io:*) echo "socket error (${1#io:})" ;;
        connect:*) echo "TCP connect failed (${1#connect:})" ;;
        timeout) echo "no answer within OP_TIMEOUT=${OP_TIMEOUT} s" ;;
        *) echo "" ;;
    esac
}
expected_class() {
    case $1 in
        57P01 | 57P03 | 08006 | 53000 | 38000 | closed | io:* | connect:*) echo yes ;;
        *) echo "**no**" ;;
    esac
}

report() {
    local commit dirty=""
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || dirty="+dirty"
    echo "## pgenrich fault and soak test"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$dirty, $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo) RAM" \
         "(load average $LOAD_START at the start, $LOAD_END at the end); PostgreSQL $PG_VERSION; everything on this host, on 127.0.0.1"
    echo "- pgenrich at its defaults$([[ ${#PGENRICH_FLAGS[@]} -gt 0 ]] && echo " plus \`${PGENRICH_FLAGS[*]}\`")" \
         "(only \`--listen\`, \`--upstream\`, \`--upstream-tls-mode disable\`, \`--aws-region\` and the mock-aws endpoint URLs given): AWS SDK standard retry mode, 3 attempts"
    ((DIRECT)) && echo "- **DIRECT=1 control run: the clients connected straight to PostgreSQL, not through pgenrich** (no ML sessions)"
    echo "- load: ${DURATION} s of $PLAIN plain sessions (pause ~${PLAIN_THINK_MS} ms between operations) and $ML ML sessions (~${ML_THINK_MS} ms; up to $ML_MAX_RANGE rows per statement over soak_ml, $(num "$ML_ROWS") rows)," \
         "kill rate $KILL_RATE per operation; $PROBES probe sessions (own process) running SELECT 1 every $PROBE_INTERVAL_MS ms$( ((DPROBE)) && echo ", and $PROBES more straight to PostgreSQL (another process)"); seed $SEED"
    echo "- mock-aws: latency $MOCK_LATENCY_MS ms + uniform 0–$MOCK_JITTER_MS ms, throttle rate $THROTTLE_RATE (ThrottlingException, HTTP 400), error rate $ERROR_RATE (HTTP 500/503); at the end: $MOCK_SUMMARY"
    echo "- PostgreSQL \`pg_ctl restart -m fast\` at $RESTART_AT s: $([[ $RESTART_OK == yes ]] && echo "back after $(awk -v a="$RESTART_T0" -v b="$RESTART_T1" 'BEGIN {printf "%.1f", b - a}') s" || echo "**failed**");" \
         "longest gap between successful probes around it: ${PROBE_GAP} s"
    echo "- CPU over the soak (100 % = one CPU): host $((HOST_BUSY_PCT * $(nproc))) % of $(($(nproc) * 100)) %, of which pgenrich ${PGENRICH_CPU_PCT} %," \
         "PostgreSQL ${PG_CPU_PCT} % (its backends' work during the restart not counted), the soak clients ${CLIENT_CPU_PCT} %, mock-aws ${MOCK_CPU_PCT} %;" \
         "other processes on the host $(awk -v h="$((HOST_BUSY_PCT * $(nproc)))" -v a="$PGENRICH_CPU_PCT" -v b="$PG_CPU_PCT" -v c="$CLIENT_CPU_PCT" -v d="$MOCK_CPU_PCT" 'BEGIN {x = h - a - b - c - d; printf "%.0f", (x < 0 ? 0 : x)}') %"
    echo
    echo "### Targets"
    echo
    local lost dup unexp corrupt wrong missing mldup plainwrong stuck probewrong
    lost=$(kvf "$LOAD" rows.lost); dup=$(kvf "$LOAD" rows.duplicated); unexp=$(kvf "$LOAD" rows.unexpected)
    corrupt=$(kvf "$LOAD" rows.corrupt); wrong=$(sumkv "$LOAD" ml.rows_wrong ""); missing=$(sumkv "$LOAD" ml.rows_missing "")
    mldup=$(sumkv "$LOAD" ml.rows_duplicated ""); plainwrong=$(sumkv "$LOAD" plain.wrong_results "")
    stuck=$(( $(sumkv "$LOAD" sessions.stuck_at_end "") + $(sumkv "$TMP/probe.out" sessions.stuck_at_end "") ))
    probewrong=$(sumkv "$TMP/probe.out" probe.wrong_results "")
    zero() { [[ $1 == 0 ]] && echo yes || echo "**no**"; }
    echo "| check | target | measured | met |"
    echo "|---|---|--:|---|"
    echo "| committed rows lost (COMMIT acknowledged, row absent) | 0 | $lost | $(zero "$lost") |"
    echo "| rows duplicated (extra copies of a key) | 0 | $dup | $(zero "$dup") |"
    echo "| rows that must not exist (COMMIT never sent, or key never issued) | 0 | $unexp | $(zero "$unexp") |"
    echo "| rows with a wrong payload | 0 | $corrupt | $(zero "$corrupt") |"
    echo "| ML rows wrong (unexpected id or value) | 0 | $wrong | $(zero "$wrong") |"
    echo "| ML rows missing from completed statements | 0 | $missing | $(zero "$missing") |"
    echo "| ML rows duplicated | 0 | $mldup | $(zero "$mldup") |"
    echo "| plain / probe reads with a wrong result | 0 | $plainwrong / $probewrong | $(zero "$((plainwrong + probewrong))") |"
    echo "| sessions stuck at the end (busy ${OP_TIMEOUT} s past the deadline) | 0 | $stuck | $(zero "$stuck") |"
    echo "| pgenrich RSS after ${WARMUP_SECS} s warm-up | flat (growth ≤ $RSS_FLAT_PCT %) | $(mb "$RSS_FIRST") → $(mb "$RSS_LAST") (${RSS_GROWTH} %), slope ${RSS_SLOPE} MB/min | $(yesno "$RSS_FLAT") |"
    echo "| probe SELECT 1 p50 during the run | ≤ ${TARGET_PROBE_RATIO}× quiet | $(ms "$S50") vs $(ms "$Q50") quiet: ${R50}× | $(yesno "$(awk -v r="$R50" -v t="$TARGET_PROBE_RATIO" 'BEGIN {print (r != "NA" && r <= t) ? 1 : 0}')") |"
    echo "| probe SELECT 1 p99 during the run | ≤ ${TARGET_PROBE_RATIO}× quiet | $(ms "$S99") vs $(ms "$Q99") quiet: ${R99}× | $(yesno "$(awk -v r="$R99" -v t="$TARGET_PROBE_RATIO" 'BEGIN {print (r != "NA" && r <= t) ? 1 : 0}')") |"
    if ((DPROBE)); then
        echo "| the same probes straight to PostgreSQL, p50 / p99 during the run ÷ quiet (the host's share; context, not a target) | — | $(ms "$DS50") / $(ms "$DS99") vs $(ms "$DQ50") / $(ms "$DQ99") quiet: $(ratio "$DS50" "$DQ50")× / $(ratio "$DS99" "$DQ99")× | — |"
        echo "| probe p50 / p99 through pgenrich ÷ straight to PostgreSQL (pgenrich's share; context) | — | quiet $(ratio "$Q50" "$DQ50")× / $(ratio "$Q99" "$DQ99")×, during the run $(ratio "$S50" "$DS50")× / $(ratio "$S99" "$DS99")× | — |"
    fi
    echo "| pgenrich survived: running, SELECT 1 and an ML statement answered at the end | yes | $SURVIVED / $SELECT1_END / $ML_END$([[ -n $GONE_AT ]] && echo " (gone at ${GONE_AT} s)") | $(yesno "$([[ $SURVIVED$SELECT1_END$ML_END == yesyesyes ]] && echo 1)") |"
    echo "| panics in pgenrich's log | 0 | $PANICS | $(zero "$PANICS") |"
    echo
    echo "### Rows written (ledger against soak_rows, read from PostgreSQL after the run)"
    echo
    echo "| committed | aborted (must be absent) | in doubt (COMMIT sent, answer lost): present / absent | rows in the table |"
    echo "|--:|--:|--:|--:|"
    echo "| $(num "$(kvf "$LOAD" keys.committed)") | $(num "$(kvf "$LOAD" keys.aborted)") | $(kvf "$LOAD" rows.in_doubt_present) / $(kvf "$LOAD" rows.in_doubt_absent) | $(num "$(kvf "$LOAD" rows.in_table)") |"
    echo
    echo "ML: $(num "$(kvf "$LOAD" ml.statements_complete)") statements completed, $(num "$(sumkv "$LOAD" ml.rows_checked "")") rows checked."
    echo
    echo "### Operations"
    echo
    echo "| role | operation | ok | failed | killed | ok/s |"
    echo "|---|---|--:|--:|--:|--:|"
    cat "$LOAD" "$TMP/probe.out" 2>/dev/null | awk -F= '/^ops\./ {split($1, k, "."); key = k[2] " | " k[3]; v[key, k[4]] += $2; keys[key] = 1}
        END {for (key in keys) print key, v[key, "ok"] + 0, v[key, "failed"] + 0, v[key, "killed"] + 0}' | sort |
        awk -v s="$DURATION" '{printf "| %s %s %s | %d | %d | %d | %.1f |\n", $1, $2, $3, $4, $5, $6, $4 / s}'
    echo
    echo "### Errors by SQLSTATE"
    echo
    echo "Counted per failed operation (\`error\`) and per refused connection attempt (\`connect\`); classes without a SQLSTATE are what the client saw. Deliberate kills are not errors (see Kills)."
    echo
    echo "| class | plain | ML | probe | direct probe | connect (all roles) | explained by this run's faults | meaning |"
    echo "|---|--:|--:|--:|--:|--:|---|---|"
    local classes c
    classes=$(cat "$LOAD" "$TMP/probe.out" "$TMP/dprobe.out" 2>/dev/null | awk -F= '/^(connect_)?error\./ {sub(/^(connect_)?error\.[a-z]+\./, "", $1); print $1}' | sort -u)
    if [[ -z $classes ]]; then
        echo "| none | | | | | | | |"
    fi
    for c in $classes; do
        echo "| \`$c\` | $(kvf "$LOAD" "error.plain.$c" | sed 's/NA/0/') | $(kvf "$LOAD" "error.ml.$c" | sed 's/NA/0/') |" \
             "$(kvf "$TMP/probe.out" "error.probe.$c" | sed 's/NA/0/') | $(kvf "$TMP/dprobe.out" "error.probe.$c" | sed 's/NA/0/') |" \
             "$(( $(sumkv "$LOAD" connect_error. ".$c") + $(sumkv "$TMP/probe.out" connect_error. ".$c") + $(sumkv "$TMP/dprobe.out" connect_error. ".$c") )) | $(expected_class "$c") | $(explain "$c") |"
    done
    echo
    echo "### Kills"
    echo
    echo "| role | point | count |"
    echo "|---|---|--:|"
    awk -F= '/^kill\./ {split($1, k, "."); printf "| %s | %s | %d |\n", k[2], k[3], $2}' "$LOAD" 2>/dev/null
    echo
    echo "### Probe latency (SELECT 1, $PROBES sessions)"
    echo
    echo "The host's CPU during the quiet baseline: ${BASE_HOST_PCT} % (100 % = one CPU; the probes and pgenrich use a few per cent)."
    echo
    echo "| phase | samples | p50 | p99 | p99.9 | max |"
    echo "|---|--:|--:|--:|--:|--:|"
    local phase file
    local p label
    for p in "" d; do
        [[ -z $p ]] || ((DPROBE)) || continue
        label=""
        [[ -z $p ]] || label="straight to PostgreSQL: "
        for phase in "quiet baseline:baseline" "whole run:soak" "before the restart:phase-before" "restart + 10 s:phase-restart" "after that:phase-after"; do
            file=$TMP/$p${phase#*:}.samples
            echo "| $label${phase%%:*} | $(num "$(wc -l <"$file")") | $(ms "$(pct "$file" 0.5)") | $(ms "$(pct "$file" 0.99)") | $(ms "$(pct "$file" 0.999)") | $(ms "$(pct "$file" 1)") |"
        done
    done
    echo
    echo "### pgenrich memory and resources"
    echo
    echo "VmRSS idle before the load $(mb "$IDLE_RSS"), largest sample $(mb "$RSS_MAX"), VmHWM at the end $(mb "$HWM"), idle after the load $(mb "$END_RSS");" \
         "open file descriptors idle $IDLE_FDS before, $END_FDS after; upstream connections left 5 s after every client had gone: $LEFT_UPSTREAM;" \
         "log lines: $LOG_ERRORS ERROR, $LOG_WARNS WARN, $PANICS panics."
    echo
    echo "VmRSS over the run (one sample every $(( ($(wc -l <"$TMP/rss.samples") / 24 + 1) * RSS_SAMPLE_SECS )) s shown; PostgreSQL restarted at ${RESTART_AT} s):"
    echo
    local step
    step=$(( $(wc -l <"$TMP/rss.samples") / 24 + 1 ))
    echo "| t (s) | $(awk -v t0="$SOAK_T0" -v s="$step" '$2 != "GONE" && (NR - 1) % s == 0 {printf "%s%.0f", (n++ ? " | " : ""), $1 - t0}' "$TMP/rss.samples") |"
    echo "|---|$(awk -v s="$step" '$2 != "GONE" && (NR - 1) % s == 0 {printf "--:|"}' "$TMP/rss.samples")"
    echo "| MB | $(awk -v s="$step" '$2 != "GONE" && (NR - 1) % s == 0 {printf "%s%.0f", (n++ ? " | " : ""), $2 / 1024}' "$TMP/rss.samples") |"
    echo "| fds | $(awk -v s="$step" '$2 != "GONE" && (NR - 1) % s == 0 {printf "%s%s", (n++ ? " | " : ""), $3}' "$TMP/rss.samples") |"
}

REPORT=$(report)
echo
echo "$REPORT"
if [[ -n $OUT ]]; then
    printf '%s\n' "$REPORT" >"$OUT"
    log "results written to $OUT"
fi
printf '%s\n' "$REPORT" >"$TMP/report.txt"
if [[ ! -s $TMP/load.out || ! -s $TMP/probe.out ]]; then
    exit 1
fi
exit 0
