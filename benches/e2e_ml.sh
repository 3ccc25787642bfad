#!/usr/bin/env bash
# End-to-end ML benchmark: throughput, first-row latency and peak memory of pgenrich evaluating
#   SELECT id, aws_sagemaker.invoke_endpoint('m', NULL, a, b) FROM t          (1,000,000 rows)
#   SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews       (100,000 rows)
# over the simple query protocol, against a throw-away PostgreSQL and mock-aws (the workspace's
# SageMaker Runtime / Comprehend mock) answering after 0 ms and after 20 ms, compared with the
# ideal set by the concurrency limits: batch rows × min(max_concurrent_calls, per endpoint) / latency.
#
# Usage (from anywhere; the repo root is found from this file):
#   benches/e2e_ml.sh                    # REPEAT=3, full sizes (a few minutes after the build)
#   QUICK=1 benches/e2e_ml.sh            # smoke test: 100k / 10k rows, REPEAT=1
#   REPEAT=5 LATENCIES="0 20 50" PER_ENDPOINT=16 OUT=ml.md benches/e2e_ml.sh
#
# Environment:
#   REPEAT          measured runs per query and latency (default 3; 1 with QUICK=1); medians quoted
#   T_ROWS          rows of t (default 1000000; 100000 with QUICK=1)
#   REVIEW_ROWS     rows of reviews (default 100000; 10000 with QUICK=1)
#   LATENCIES       mock-aws latencies in ms, space-separated (default "0 20")
#   CHUNK_ROWS, CHUNKS_IN_FLIGHT, BATCH_ROWS, MAX_CALLS, PER_ENDPOINT
#                   pgenrich's --chunk-rows, --chunks-in-flight, --default-batch-rows,
#                   --max-concurrent-calls, --max-concurrent-calls-per-endpoint
#                   (defaults 1000, 4, 500, 16, 8: pgenrich's own defaults)
#   RUN_TIMEOUT     seconds one measured query may take before it counts as failed (default 600)
#   OUT=path        also write the Markdown results to this file
#   SKIP_BUILD=1    use the existing release binaries instead of running cargo build --release
#   PGENRICH_ARGS   extra pgenrich flags, split on spaces (e.g. "--worker-threads 2")
#
# Every measured run gets a fresh pgenrich and a fresh mock-aws (VmHWM, the peak RSS read from
# /proc/<pid>/status, is a process-lifetime high-water mark; mock-aws's call counters and peak
# concurrency are per process). Before each run one tiny ML statement per function warms up the
# AWS SDK clients, so first-row latency is that of a running sidecar. The results are checked:
# the row count of every run, no NULL results, and once, on a sample of 2,000 rows each, the
# values against the mock models' formulas computed in SQL.
#
# Also measured: pgenrich's and mock-aws's CPU time per query, the calls pgenrich made (its
# "ML statement" log line) and mock-aws's peak number of concurrent calls; and, as a ceiling, the
# base statements (the ML calls' inputs only) sent straight to PostgreSQL by the same client.
# Targets shown: at 20 ms (any latency > 0) >= 80 % of the ideal; at 0 ms invoke_endpoint
# >= 200,000 rows/s; peak RSS <= 100 MB on the invoke_endpoint query. Missing one is reported,
# not an error. pgenrich, PostgreSQL, mock-aws and the client share the host's CPUs.
#
# Everything runs on 127.0.0.1 on free ports, in a mktemp -d directory that is removed on exit
# together with every process the script started; the binaries run from copies in it, so a
# concurrent cargo build cannot swap them mid-benchmark. As root, PostgreSQL runs as postgres. Exit status: 0 when every run and check
# succeeded (targets missed or not), 1 when any failed (shown as FAIL), 2 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    REPEAT=${REPEAT:-1}
    T_ROWS=${T_ROWS:-100000}
    REVIEW_ROWS=${REVIEW_ROWS:-10000}
fi
REPEAT=${REPEAT:-3}
T_ROWS=${T_ROWS:-1000000}
REVIEW_ROWS=${REVIEW_ROWS:-100000}
LATENCIES=${LATENCIES:-0 20}
CHUNK_ROWS=${CHUNK_ROWS:-1000}
CHUNKS_IN_FLIGHT=${CHUNKS_IN_FLIGHT:-4}
BATCH_ROWS=${BATCH_ROWS:-500}
MAX_CALLS=${MAX_CALLS:-16}
PER_ENDPOINT=${PER_ENDPOINT:-8}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
OUT=${OUT:-}
COMPREHEND_BATCH=25                 # documents per BatchDetectSentiment call (the service's limit)
CHECK_ROWS=2000                     # rows of each table whose results are checked value by value
# Targets: at a latency > 0, this share of the ideal; at 0 ms, invoke_endpoint at least this many
# rows/s; peak RSS at most this many MB on the invoke_endpoint query.
TARGET_PCT=80
TARGET_INVOKE_0MS=200000
TARGET_RSS_MB=100

log() { printf '[e2e-ml %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

need_positive_ints REPEAT T_ROWS REVIEW_ROWS CHUNK_ROWS CHUNKS_IN_FLIGHT BATCH_ROWS MAX_CALLS PER_ENDPOINT RUN_TIMEOUT
((T_ROWS >= CHECK_ROWS && REVIEW_ROWS >= CHECK_ROWS)) || die "T_ROWS and REVIEW_ROWS must be >= $CHECK_ROWS"
read -r -a LATENCY_LIST <<<"$LATENCIES"
((${#LATENCY_LIST[@]} > 0)) || die "LATENCIES is empty"
for l in "${LATENCY_LIST[@]}"; do [[ $l =~ ^[0-9]+$ ]] || die "LATENCIES must be integers (ms), got '$l'"; done

isolate_env

# ---------------------------------------------------------------------------------------------
# 1. Tools and build
# ---------------------------------------------------------------------------------------------
PG_BIN=$(find_pg_bin initdb pg_ctl postgres psql) || die "no /usr/lib/postgresql/<ver>/bin with initdb pg_ctl postgres psql; install it with: apt-get install -y postgresql"
need_tools awk sort timeout runuser cmp
pick_run_as

RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PGENRICH_BIN=$RELEASE/pgenrich
MOCK_BIN=$RELEASE/mock-aws
CLIENT_BIN=$RELEASE/examples/ml_stream_client
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 to use existing binaries)"
    log "cargo build --release (pgenrich, ml_stream_client, mock-aws)"
    cargo build --release -p pgenrich --bin pgenrich --example ml_stream_client >&2
    cargo build --release -p mock-aws --bin mock-aws >&2
fi
for bin in "$PGENRICH_BIN" "$MOCK_BIN" "$CLIENT_BIN"; do
    [[ -x $bin ]] || die "$bin does not exist"
done

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/pgenrich-e2e-ml.XXXXXX)
PGENRICH_PID=""
MOCK_PID=""
CLIENT_PID=""
PG_STARTED=0
CLEANED=0



cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM
    if alive "$CLIENT_PID"; then
        kill -TERM "$CLIENT_PID" 2>/dev/null
        wait_gone "$CLIENT_PID" 5 || kill -KILL "$CLIENT_PID" 2>/dev/null
    fi
    stop_pgenrich
    stop_mock
    stop_postgres
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((EUID == 0)); then chown "$RUN_AS": "$TMP"; fi
chmod 755 "$TMP"
mkdir -p "$TMP/runs" "$TMP/bin"
# Run copies, so that a cargo build elsewhere cannot swap a binary between runs.
cp "$PGENRICH_BIN" "$MOCK_BIN" "$CLIENT_BIN" "$TMP/bin/"
PGENRICH_BIN=$TMP/bin/pgenrich
MOCK_BIN=$TMP/bin/mock-aws
CLIENT_BIN=$TMP/bin/ml_stream_client

# Free loopback ports outside the usual ephemeral range; a port counts as free when nothing
# accepts a connection on it. Every process start takes a new one.
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

# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL and data
# ---------------------------------------------------------------------------------------------
next_port; PG_PORT=$PORT
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (data in $TMP/data)"
init_trust_cluster
# A throw-away server: durability off makes the load fast and changes nothing for the reads.
start_cluster "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$TMP -c max_connections=50 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off"

psql_at() { # PORT, then psql arguments
    local port=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "dbname=postgres connect_timeout=5" "$@"
}

# Sentiment phrases and the mock model's label for each (mock-aws/src/models.rs counts the
# positive and negative words); the second part of each body is neutral, and the id makes every
# body distinct, so pgenrich's per-statement de-duplication saves nothing.
PHRASES="ARRAY['great product, works as described', 'terrible, it broke after a week',
  'good value but bad packaging', 'arrived on tuesday', 'love it: excellent quality, the best',
  'awful support and a poor manual', 'nice colour', 'the worst purchase, horrible smell, sad',
  'it is fine I guess', 'amazing sound but the case is broken', 'happy with it, wonderful and fantastic',
  'disappointing, I hate the buttons']"
LABELS="ARRAY['POSITIVE', 'NEGATIVE', 'MIXED', 'NEUTRAL', 'POSITIVE', 'NEGATIVE', 'POSITIVE',
  'NEGATIVE', 'NEUTRAL', 'MIXED', 'POSITIVE', 'NEGATIVE']"
TAILS="ARRAY['would buy again', 'shipping took 3 days', 'size runs small', 'as pictured',
  'a gift for my son', 'second order', 'no further comment']"

log "loading t ($T_ROWS rows) and reviews ($REVIEW_ROWS rows)"
# t: every (a, b) distinct; a has at most three binary-exact decimals, so a + b is exact.
psql_at "$PG_PORT" >"$TMP/load.log" 2>&1 <<SQL || { cat "$TMP/load.log" >&2; die "loading the tables failed"; }
CREATE TABLE t (id int, a float8, b int);
INSERT INTO t SELECT g, g * 0.5 + (g % 7) * 0.125, (g::bigint * 7919 % 100000)::int
  FROM generate_series(1, $T_ROWS) g;
CREATE TABLE reviews (id int, body text);
INSERT INTO reviews SELECT g, format('review %s: %s; %s', g, ($PHRASES)[1 + g % 12], ($TAILS)[1 + (g / 12) % 7])
  FROM generate_series(1, $REVIEW_ROWS) g;
VACUUM (FREEZE, ANALYZE) t, reviews;
SQL

# ---------------------------------------------------------------------------------------------
# 3. mock-aws and pgenrich, fresh for every measured run
# ---------------------------------------------------------------------------------------------
PGENRICH_LOG_FILTER="warn,pgenrich::session=info"   # info: the one "ML statement" line per statement
PGENRICH_FLAGS=(--chunk-rows "$CHUNK_ROWS" --chunks-in-flight "$CHUNKS_IN_FLIGHT"
    --default-batch-rows "$BATCH_ROWS" --max-concurrent-calls "$MAX_CALLS"
    --max-concurrent-calls-per-endpoint "$PER_ENDPOINT")
read -r -a EXTRA_ARGS <<<"$EXTRA_PGENRICH_ARGS"
PGENRICH_FLAGS+=("${EXTRA_ARGS[@]}")
MOCK_PORT=""
PGENRICH_PORT=""

start_mock() { # LATENCY_MS LOGNAME
    next_port; MOCK_PORT=$PORT
    "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --latency-ms "$1" \
        >"$TMP/runs/$2.mock.out" 2>"$TMP/runs/$2.mock.err" </dev/null &
    MOCK_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q 'mock-aws listening on' "$TMP/runs/$2.mock.out" 2>/dev/null && return 0
        alive "$MOCK_PID" || break
        sleep 0.1
    done
    cat "$TMP/runs/$2.mock.out" "$TMP/runs/$2.mock.err" >&2
    die "mock-aws did not start on 127.0.0.1:$MOCK_PORT"
}

start_pgenrich() { # LOGNAME
    next_port; PGENRICH_PORT=$PORT
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true \
    RUST_LOG=$PGENRICH_LOG_FILTER \
        "$PGENRICH_BIN" --listen "127.0.0.1:$PGENRICH_PORT" --upstream "127.0.0.1:$PG_PORT" \
        --upstream-tls-mode disable --aws-region us-east-1 \
        --sagemaker-endpoint-url "http://127.0.0.1:$MOCK_PORT" \
        --comprehend-endpoint-url "http://127.0.0.1:$MOCK_PORT" \
        "${PGENRICH_FLAGS[@]}" >"$TMP/runs/$1.pgenrich.log" 2>&1 </dev/null &
    PGENRICH_PID=$!
    local start=$SECONDS out
    while :; do
        if out=$(psql_at "$PGENRICH_PORT" -A -t -c 'SELECT 1' 2>&1) && [[ $out == 1 ]]; then
            break
        fi
        if ! alive "$PGENRICH_PID"; then
            tail -n 30 "$TMP/runs/$1.pgenrich.log" >&2
            die "pgenrich exited during startup"
        fi
        ((SECONDS - start < 30)) || { tail -n 30 "$TMP/runs/$1.pgenrich.log" >&2; die "pgenrich did not accept connections within 30 s: $out"; }
        sleep 0.2
    done
    # Warm-up: the first ML statement of each service builds its SDK client.
    out=$(psql_at "$PGENRICH_PORT" -A -t \
        -c "SELECT aws_sagemaker.invoke_endpoint('m', NULL, 1, 2)" \
        -c "SELECT aws_comprehend.detect_sentiment('good', 'en')" 2>&1) || true
    if [[ $out != $'3\n(POSITIVE,0.6666667)' ]]; then
        log "warm-up ML statements through pgenrich gave unexpected output:"
        sed 's/^/    | /' <<<"$out" >&2
        WARMUP_FAILURES=$((WARMUP_FAILURES + 1))
    fi
}
WARMUP_FAILURES=0

cpu_s() { # PID -> user + system CPU seconds of the process so far, or NA
    local v=""
    [[ -r /proc/$1/stat ]] && v=$(awk -v hz="$CLK_TCK" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz}' "/proc/$1/stat" 2>/dev/null)
    echo "${v:-NA}"
}
CLK_TCK=$(getconf CLK_TCK)
vm_kb() { # PID FIELD -> kB from /proc/PID/status, or NA
    local v=""
    [[ -r /proc/$1/status ]] && v=$(awk -v f="$2:" '$1 == f {print $2; exit}' "/proc/$1/status" 2>/dev/null)
    echo "${v:-NA}"
}

# ---------------------------------------------------------------------------------------------
# 4. Correctness check (once, at the first latency): 2,000 rows of each query, compared with the
#    mock models' formulas evaluated by PostgreSQL directly.
# ---------------------------------------------------------------------------------------------
FAILURES=0
check() {
    local name=$1 via_sql=$2 expected_sql=$3
    if ! psql_at "$PGENRICH_PORT" -A -t -c "$via_sql" >"$TMP/check.$name.got" 2>&1; then
        log "CHECK FAILED: $name through pgenrich:"
        sed 's/^/    | /' "$TMP/check.$name.got" | head -n 20 >&2
        FAILURES=$((FAILURES + 1))
        return 0
    fi
    psql_at "$PG_PORT" -A -t -c "$expected_sql" >"$TMP/check.$name.want" 2>&1 \
        || { cat "$TMP/check.$name.want" >&2; die "the expected values for $name could not be computed"; }
    if cmp -s "$TMP/check.$name.got" "$TMP/check.$name.want"; then
        log "check $name: $(wc -l <"$TMP/check.$name.got") rows as expected"
    else
        log "CHECK FAILED: $name through pgenrich differs from the expected values (got vs want):"
        diff "$TMP/check.$name.got" "$TMP/check.$name.want" | head -n 20 | sed 's/^/    | /' >&2
        FAILURES=$((FAILURES + 1))
    fi
}
run_checks() {
    start_mock "${LATENCY_LIST[0]}" check
    start_pgenrich check
    check invoke_endpoint \
        "SELECT id, aws_sagemaker.invoke_endpoint('m', NULL, a, b) FROM t WHERE id <= $CHECK_ROWS ORDER BY id" \
        "SELECT id, trim_scale((a + b)::numeric) FROM t WHERE id <= $CHECK_ROWS ORDER BY id"
    check detect_sentiment \
        "SELECT id, (aws_comprehend.detect_sentiment(body, 'en')).sentiment FROM reviews WHERE id <= $CHECK_ROWS ORDER BY id" \
        "SELECT id, ($LABELS)[1 + id % 12] FROM reviews WHERE id <= $CHECK_ROWS ORDER BY id"
    stop_pgenrich
    stop_mock
}

# ---------------------------------------------------------------------------------------------
# 5. Measured runs
# ---------------------------------------------------------------------------------------------
QUERIES=(invoke_endpoint detect_sentiment)
declare -A SQL=(
    [invoke_endpoint]="SELECT id, aws_sagemaker.invoke_endpoint('m', NULL, a, b) FROM t"
    [detect_sentiment]="SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews"
)
# The base statements pgenrich runs on the database, sent straight to it: the streaming ceiling.
declare -A BASE_SQL=(
    [invoke_endpoint]="SELECT id, a, b FROM t"
    [detect_sentiment]="SELECT id, body FROM reviews"
)
declare -A NROWS=([invoke_endpoint]=$T_ROWS [detect_sentiment]=$REVIEW_ROWS)
declare -A PER_CALL=([invoke_endpoint]=$BATCH_ROWS [detect_sentiment]=$COMPREHEND_BATCH)
CONCURRENCY=$((MAX_CALLS < PER_ENDPOINT ? MAX_CALLS : PER_ENDPOINT))

kv() { # FILE KEY -> the value of the first KEY=value word in FILE, or NA
    awk -v k="$2" '{for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) {print substr($i, length(k) + 2); found = 1; exit}}
        END {if (!found) print "NA"}' "$1"
}

RESULTS="$TMP/results.tsv"   # latency query rep status rows rows_per_s first_row_s total_s hwm_kb calls mock_calls mock_peak cpu_s mock_cpu_s
: >"$RESULTS"
# run_client PORT SQL OUTFILE -> exit status of the client (124 on timeout)
run_client() {
    local rc=0
    timeout --kill-after=10 "$RUN_TIMEOUT" "$CLIENT_BIN" \
        "host=127.0.0.1 port=$1 user=postgres dbname=postgres sslmode=disable" "$2" >"$3" 2>&1 </dev/null &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    return "$rc"
}

measure() { # LATENCY QUERY REP
    local lat=$1 q=$2 rep=$3 label="$2-${1}ms-r$3" rc=0 status=ok
    local out="$TMP/runs/$label.client" hwm calls mock_calls mock_peak rows nulls rss_before cpu_before cpu mock_before mock_cpu
    start_mock "$lat" "$label"
    start_pgenrich "$label"
    rss_before=$(vm_kb "$PGENRICH_PID" VmRSS)
    cpu_before=$(cpu_s "$PGENRICH_PID")
    mock_before=$(cpu_s "$MOCK_PID")
    run_client "$PGENRICH_PORT" "${SQL[$q]}" "$out" || rc=$?
    hwm=$(vm_kb "$PGENRICH_PID" VmHWM)
    cpu=$(cpu_s "$PGENRICH_PID")
    cpu=$([[ $cpu == NA || $cpu_before == NA ]] && echo NA || awk -v a="$cpu" -v b="$cpu_before" 'BEGIN {printf "%.2f", a - b}')
    mock_cpu=$(cpu_s "$MOCK_PID")
    mock_cpu=$([[ $mock_cpu == NA || $mock_before == NA ]] && echo NA || awk -v a="$mock_cpu" -v b="$mock_before" 'BEGIN {printf "%.2f", a - b}')
    rows=$(kv "$out" rows)
    nulls=$(kv "$out" null_last)
    if ((rc != 0)) || [[ $rows != "${NROWS[$q]}" || $nulls != 0 ]]; then
        status=FAIL
        FAILURES=$((FAILURES + 1))
        {
            log "FAILED: $q at ${lat} ms (run $rep): client exit status $rc$( ((rc == 124)) && echo " (timed out after ${RUN_TIMEOUT}s)"), rows=$rows (expected ${NROWS[$q]}), null_last=$nulls"
            sed 's/^/    | /' "$out" | tail -n 20
            alive "$PGENRICH_PID" || log "pgenrich is no longer running"
            log "pgenrich log:"
            tail -n 20 "$TMP/runs/$label.pgenrich.log" | sed 's/^/    | /'
        } >&2
    fi
    stop_pgenrich
    stop_mock
    # pgenrich's "ML statement" line (ANSI colours stripped) and mock-aws's exit summary
    # "mock-aws: N InvokeEndpoint calls, M Comprehend calls, peak concurrency P".
    { grep 'ML statement' "$TMP/runs/$label.pgenrich.log" || true; } | sed 's/\x1b\[[0-9;]*m//g' | tail -n 1 >"$TMP/runs/$label.mlline"
    calls=$(kv "$TMP/runs/$label.mlline" calls)
    mock_calls=$(awk -v q="$q" '/peak concurrency/ {print (q == "invoke_endpoint") ? $2 : $5; exit}' "$TMP/runs/$label.mock.err")
    mock_peak=$(awk '/peak concurrency/ {print $NF; exit}' "$TMP/runs/$label.mock.err")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$lat" "$q" "$rep" "$status" "$rows" \
        "$(kv "$out" rows_per_s)" "$(kv "$out" first_row_s)" "$(kv "$out" total_s)" "$hwm" \
        "${calls:-NA}" "${mock_calls:-NA}" "${mock_peak:-NA}" "$cpu" "$mock_cpu" >>"$RESULTS"
    log "  $q at ${lat} ms, run $rep: $status $(head -n 1 "$out"); pgenrich RSS ${rss_before} kB before, VmHWM ${hwm} kB, CPU ${cpu} s (mock-aws ${mock_cpu} s); calls ${calls:-NA} (mock: ${mock_calls:-NA}, peak concurrency ${mock_peak:-NA})"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
REF="$TMP/reference.tsv"   # query rep rows_per_s first_row_s
: >"$REF"
log "settings: t=$T_ROWS rows, reviews=$REVIEW_ROWS rows, REPEAT=$REPEAT, latencies: ${LATENCY_LIST[*]} ms; pgenrich ${PGENRICH_FLAGS[*]}"
log "reference: the base statements straight to PostgreSQL"
for ((rep = 1; rep <= REPEAT; rep++)); do
    for q in "${QUERIES[@]}"; do
        out="$TMP/runs/reference-$q-r$rep.client"
        if run_client "$PG_PORT" "${BASE_SQL[$q]}" "$out"; then
            printf '%s\t%s\t%s\t%s\n' "$q" "$rep" "$(kv "$out" rows_per_s)" "$(kv "$out" first_row_s)" >>"$REF"
            log "  ${BASE_SQL[$q]}: $(head -n 1 "$out")"
        else
            log "reference run failed: $(cat "$out")"
        fi
    done
done

log "correctness check at ${LATENCY_LIST[0]} ms"
run_checks

for lat in "${LATENCY_LIST[@]}"; do
    log "mock-aws latency ${lat} ms: $REPEAT run(s) per query"
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for q in "${QUERIES[@]}"; do
            measure "$lat" "$q" "$rep"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# 6. Results
# ---------------------------------------------------------------------------------------------
col() { # QUERY LATENCY COLUMN -> values of successful runs
    awk -F'\t' -v q="$1" -v l="$2" -v c="$3" '$1 == l && $2 == q && $4 == "ok" && $c != "NA" {print $c}' "$RESULTS"
}
maximum() { sort -g | tail -n 1 | awk 'END {print (NR ? $1 : "NA")}'; }
num() { # 1234567.8 -> 1,234,568
    [[ $1 == NA ]] && echo NA || awk -v x="$1" 'BEGIN {printf "%.0f", x}' | sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta'
}

report() {
    local commit dirty=""
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || dirty="+dirty"
    echo "## pgenrich end-to-end ML benchmark"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$dirty, $(nproc) CPUs (load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end);" \
         "PostgreSQL $PG_VERSION; pgenrich, PostgreSQL, mock-aws and the client all on this host, on 127.0.0.1"
    echo "- pgenrich \`${PGENRICH_FLAGS[*]}\` (simple query protocol, client \`examples/ml_stream_client.rs\`)"
    echo "- t: $T_ROWS rows, reviews: $REVIEW_ROWS rows (every input distinct); $REPEAT run(s) per query and latency, fresh pgenrich and mock-aws per run"
    echo "- ideal rows/s = rows per call × min(max_concurrent_calls, per endpoint) / latency = ${PER_CALL[invoke_endpoint]} (invoke_endpoint) or ${PER_CALL[detect_sentiment]} (detect_sentiment) × $CONCURRENCY / latency"
    echo
    echo "| query | rows | latency | median rows/s | ideal rows/s | % of ideal | median first row | max peak RSS | target | met |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|---|---|"
    local lat q rps first hwm ideal pct target met rss_mb n runs
    for lat in "${LATENCY_LIST[@]}"; do
        for q in "${QUERIES[@]}"; do
            rps=$(col "$q" "$lat" 6 | median)
            first=$(col "$q" "$lat" 7 | median)
            hwm=$(col "$q" "$lat" 9 | maximum)
            n=$(col "$q" "$lat" 6 | wc -l)
            runs=$(awk -F'\t' -v q="$q" -v l="$lat" '$1 == l && $2 == q' "$RESULTS" | wc -l)
            rss_mb=$([[ $hwm == NA ]] && echo NA || awk -v k="$hwm" 'BEGIN {printf "%.1f", k / 1024}')
            if ((lat > 0)); then
                ideal=$(awk -v b="${PER_CALL[$q]}" -v c="$CONCURRENCY" -v l="$lat" 'BEGIN {printf "%.0f", b * c / (l / 1000)}')
                pct=$([[ $rps == NA ]] && echo NA || awk -v r="$rps" -v i="$ideal" 'BEGIN {printf "%.0f%%", 100 * r / i}')
                target="≥ $TARGET_PCT% of ideal"
                met="rows/s: $([[ $rps == NA ]] && echo "no (FAIL)" || awk -v r="$rps" -v i="$ideal" -v t="$TARGET_PCT" 'BEGIN {print (100 * r / i >= t) ? "yes" : "no"}')"
                ideal=$(num "$ideal")
            else
                ideal="∞"
                pct="—"
                if [[ $q == invoke_endpoint ]]; then
                    target="≥ $(num "$TARGET_INVOKE_0MS") rows/s"
                    met="rows/s: $([[ $rps == NA ]] && echo "no (FAIL)" || awk -v r="$rps" -v t="$TARGET_INVOKE_0MS" 'BEGIN {print (r >= t) ? "yes" : "no"}')"
                else
                    target=""
                    met=""
                fi
            fi
            if [[ $q == invoke_endpoint ]]; then
                target+="${target:+, }RSS ≤ $TARGET_RSS_MB MB"
                met+="${met:+, }RSS: $([[ $rss_mb == NA ]] && echo "no (FAIL)" || awk -v m="$rss_mb" -v t="$TARGET_RSS_MB" 'BEGIN {print (m <= t) ? "yes" : "no"}')"
            fi
            ((n == runs)) || met+="${met:+; }$((runs - n)) of $runs runs FAILED"
            echo "| $q | $(num "${NROWS[$q]}") | $lat ms | $(num "$rps") | $ideal | $pct |" \
                 "$([[ $first == NA ]] && echo NA || awk -v s="$first" 'BEGIN {printf "%.1f ms", s * 1000}') |" \
                 "${rss_mb} MB | ${target:-—} | ${met:-—} |"
        done
    done
    echo
    local refs=()
    for q in "${QUERIES[@]}"; do
        refs+=("\`${BASE_SQL[$q]}\` $(num "$(awk -F'\t' -v q="$q" '$1 == q {print $3}' "$REF" | median)")")
    done
    echo "Reference, the base statements sent straight to PostgreSQL by the same client (median rows/s):" \
         "$(IFS=';'; echo "${refs[*]}" | sed 's/;/; /g')."
    echo
    echo "### Every run"
    echo
    echo "calls: InvokeEndpoint / BatchDetectSentiment calls per pgenrich's log (mock-aws's count, which includes the one warm-up call, in brackets);" \
         "peak conc.: most calls mock-aws had in flight at once; CPU: user + system CPU time of pgenrich (and of mock-aws) during the query."
    echo
    echo "| query | latency | run | status | rows | rows/s | first row | total | peak RSS | CPU (mock-aws) | calls | peak conc. |"
    echo "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    awk -F'\t' '{
        printf "| %s | %s ms | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s |\n", $2, $1, $3, $4, $5, $6,
            ($7 == "NA" ? "NA" : sprintf("%.1f ms", $7 * 1000)), ($8 == "NA" ? "NA" : sprintf("%.2f s", $8)),
            ($9 == "NA" ? "NA" : sprintf("%.1f MB", $9 / 1024)), ($13 == "NA" ? "NA" : $13 " s") " (" $14 " s)", $10, $11, $12 }' "$RESULTS"
    if ((FAILURES > 0)); then
        echo
        echo "**$FAILURES run(s) or check(s) failed** (left out of the medians); details on stderr."
    fi
    if ((WARMUP_FAILURES > 0)); then
        echo
        echo "**$WARMUP_FAILURES warm-up statement pair(s) gave unexpected output** (details on stderr)."
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
    log "$FAILURES run(s) or check(s) failed"
    exit 1
fi
exit 0
