#!/usr/bin/env bash
# End-to-end memory benchmark: pgenrich's peak RSS, at its default settings, on ML statements
# whose results are large, read slowly, or many at once, and the throughput of a residual
# (filtering) ML statement against the streaming select-list form:
#   unlimited-execute  Parse/Bind/Execute(max_rows 2147483647)/Sync of
#                      SELECT repeat('x', 200000) AS pad, aws_comprehend.detect_sentiment('hi', 'en')
#                        FROM generate_series(1, 5000)                     (≈ 1 GB), read at full speed
#   stalled-reader     the same statement as one simple Query message; the client reads ~1 MB,
#                      stops reading for 10 s, then reads the rest
#   100-sessions       100 connections at once, each running (simple protocol, full speed)
#                      SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g)
#                        FROM generate_series(1, 200000) g
#   residual vs streaming, over t (1,000,000 rows: id, a = id % 1000), mock-aws at 0 ms:
#     streaming        SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, a) FROM t
#     residual         SELECT id FROM t WHERE aws_sagemaker.invoke_endpoint('score', NULL, a)::float8 > 499.5
#                      (the mock's default model returns the sum of its inputs, i.e. a: half the
#                      rows pass); rows/s = rows of t scanned / elapsed, medians of REPEAT runs,
#                      ratio residual ÷ streaming.
# Targets shown: peak RSS <= 200 MB in every scenario; residual ÷ streaming >= 0.7. Missing one
# is reported, not an error.
#
# Usage (from anywhere; the repo root is found from this file):
#   benches/e2e_memory.sh                  # full sizes, REPEAT=3 (several minutes after the build)
#   QUICK=1 benches/e2e_memory.sh          # smoke test: smaller sizes, REPEAT=1, 3 s stall
#   REPEAT=5 OUT=memory.md SKIP_BUILD=1 benches/e2e_memory.sh
#
# Environment:
#   BIG_ROWS        rows of the unlimited-execute / stalled-reader statement (default 5000; 500 with QUICK=1)
#   PAD_BYTES       bytes of each of those rows' pad column (default 200000)
#   STALL_AFTER     bytes the stalled reader reads before it stalls (default 1048576)
#   STALL_SECS      seconds it stops reading (default 10; 3 with QUICK=1)
#   SESSIONS        concurrent connections of 100-sessions (default 100)
#   SESSION_ROWS    rows per connection there (default 200000; 2000 with QUICK=1)
#   T_ROWS          rows of t for residual vs streaming (default 1000000; 100000 with QUICK=1)
#   REPEAT          runs of each residual vs streaming form (default 3; 1 with QUICK=1); medians quoted
#   LATENCY_MS      mock-aws latency in every scenario (default 0)
#   RUN_TIMEOUT     seconds one client run may take before it counts as failed (default 600)
#   RSS_LIMIT_MB    the watchdog kills pgenrich when its VmRSS exceeds this (default 6144): the run
#                   then counts as failed, and the host is spared
#   SAMPLE_SECS     VmRSS sampling interval in seconds (default 0.5)
#   OUT=path        also write the Markdown results to this file
#   SKIP_BUILD=1    use the existing release binaries instead of running cargo build --release
#   PGENRICH_ARGS   extra pgenrich flags, split on spaces (none by default: pgenrich runs at its
#                   defaults, with only --listen, --upstream, --upstream-tls-mode disable,
#                   --aws-region and the two mock-aws endpoint URLs)
#
# Peak RSS: every run (each scenario, each residual/streaming repetition) gets a fresh pgenrich and
# a fresh mock-aws; after one tiny warm-up ML statement per function (which builds the AWS SDK
# clients), its VmRSS is sampled every 0.5 s while the client runs, and its VmHWM (the process
# lifetime's peak, read from /proc/<pid>/status) is read when the client has finished. The peak
# quoted is VmHWM (at least the sampled maximum); the stalled reader also shows the largest sample
# during the stall and after it. The clients are examples/ml_raw_client.rs (raw wire protocol:
# extended protocol, the stall, the concurrent sessions) and examples/ml_stream_client.rs
# (tokio-postgres, residual vs streaming). Every result is checked: the row count, the
# CommandComplete tag, no NULL ML results, and in 100-sessions every row's ML result against its
# input (the mock echoes the sum, i.e. g).
#
# Everything runs on 127.0.0.1 on free ports, in a mktemp -d directory that is removed on exit
# together with every process the script started; the binaries run from copies in it. PostgreSQL
# uses trust authentication (the raw client sends only a StartupMessage); as root it runs as
# postgres. Exit status: 0 when every run and check succeeded (targets met or not), 1 when any
# failed (shown as FAIL), 2 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" == 1 ]]; then
    BIG_ROWS=${BIG_ROWS:-500}
    STALL_SECS=${STALL_SECS:-3}
    SESSION_ROWS=${SESSION_ROWS:-2000}
    T_ROWS=${T_ROWS:-100000}
    REPEAT=${REPEAT:-1}
fi
BIG_ROWS=${BIG_ROWS:-5000}
PAD_BYTES=${PAD_BYTES:-200000}
STALL_AFTER=${STALL_AFTER:-1048576}
STALL_SECS=${STALL_SECS:-10}
SESSIONS=${SESSIONS:-100}
SESSION_ROWS=${SESSION_ROWS:-200000}
T_ROWS=${T_ROWS:-1000000}
REPEAT=${REPEAT:-3}
LATENCY_MS=${LATENCY_MS:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-6144}
SAMPLE_SECS=${SAMPLE_SECS:-0.5}
OUT=${OUT:-}
TARGET_RSS_MB=200
TARGET_RATIO=0.7
THRESHOLD=499.5                      # a = id % 1000 > 499.5: half the rows of t pass

log() { printf '[e2e-memory %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

need_positive_ints BIG_ROWS PAD_BYTES STALL_AFTER STALL_SECS SESSIONS SESSION_ROWS T_ROWS REPEAT RUN_TIMEOUT RSS_LIMIT_MB
[[ $SAMPLE_SECS =~ ^[0-9]*\.?[0-9]+$ ]] || die "SAMPLE_SECS must be a number of seconds, got '$SAMPLE_SECS'"
[[ $LATENCY_MS =~ ^[0-9]+$ ]] || die "LATENCY_MS must be an integer (ms), got '$LATENCY_MS'"
((T_ROWS >= 1000)) || die "T_ROWS must be >= 1000"

isolate_env

# ---------------------------------------------------------------------------------------------
# 1. Tools and build
# ---------------------------------------------------------------------------------------------
PG_BIN=$(find_pg_bin initdb pg_ctl postgres psql) || die "no /usr/lib/postgresql/<ver>/bin with initdb pg_ctl postgres psql; install it with: apt-get install -y postgresql"
need_tools awk sort timeout runuser
pick_run_as

RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PGENRICH_BIN=$RELEASE/pgenrich
MOCK_BIN=$RELEASE/mock-aws
RAW_BIN=$RELEASE/examples/ml_raw_client
STREAM_BIN=$RELEASE/examples/ml_stream_client
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 to use existing binaries)"
    log "cargo build --release (pgenrich, ml_raw_client, ml_stream_client, mock-aws)"
    cargo build --release -p pgenrich --bin pgenrich --example ml_raw_client --example ml_stream_client >&2
    cargo build --release -p mock-aws --bin mock-aws >&2
fi
for bin in "$PGENRICH_BIN" "$MOCK_BIN" "$RAW_BIN" "$STREAM_BIN"; do
    [[ -x $bin ]] || die "$bin does not exist"
done

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/pgenrich-e2e-memory.XXXXXX)
PGENRICH_PID=""
MOCK_PID=""
CLIENT_PID=""
SAMPLER_PID=""
PG_STARTED=0
CLEANED=0

stop_sampler() {
    if alive "$SAMPLER_PID"; then
        kill -TERM "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    SAMPLER_PID=""
}

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
    stop_sampler
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
cp "$PGENRICH_BIN" "$MOCK_BIN" "$RAW_BIN" "$STREAM_BIN" "$TMP/bin/"
PGENRICH_BIN=$TMP/bin/pgenrich
MOCK_BIN=$TMP/bin/mock-aws
RAW_BIN=$TMP/bin/ml_raw_client
STREAM_BIN=$TMP/bin/ml_stream_client

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
# 2. PostgreSQL (trust authentication) and data
# ---------------------------------------------------------------------------------------------
next_port; PG_PORT=$PORT
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (data in $TMP/data)"
init_trust_cluster
# A throw-away server: durability off makes the load fast and changes nothing for the reads.
start_cluster "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$TMP -c max_connections=$((SESSIONS + 30)) -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off"

psql_at() { # PORT, then psql arguments
    local port=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "dbname=postgres connect_timeout=5" "$@"
}

log "loading t ($T_ROWS rows)"
psql_at "$PG_PORT" >"$TMP/load.log" 2>&1 <<SQL || { cat "$TMP/load.log" >&2; die "loading t failed"; }
CREATE TABLE t AS SELECT g AS id, g % 1000 AS a FROM generate_series(1, $T_ROWS) g;
VACUUM (FREEZE, ANALYZE) t;
SQL
RESIDUAL_ROWS=$(psql_at "$PG_PORT" -A -t -c "SELECT count(*) FROM t WHERE a::float8 > $THRESHOLD") \
    || die "counting the residual form's rows failed"

# ---------------------------------------------------------------------------------------------
# 3. mock-aws, pgenrich (defaults) and the RSS sampler, fresh for every run
# ---------------------------------------------------------------------------------------------
PGENRICH_LOG_FILTER="warn,pgenrich::session=info"   # info: the one "ML statement" line per statement
read -r -a PGENRICH_FLAGS <<<"$EXTRA_PGENRICH_ARGS"
MOCK_PORT=""
PGENRICH_PORT=""

start_mock() { # LOGNAME
    next_port; MOCK_PORT=$PORT
    "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --latency-ms "$LATENCY_MS" \
        >"$TMP/runs/$1.mock.out" 2>"$TMP/runs/$1.mock.err" </dev/null &
    MOCK_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q 'mock-aws listening on' "$TMP/runs/$1.mock.out" 2>/dev/null && return 0
        alive "$MOCK_PID" || break
        sleep 0.1
    done
    cat "$TMP/runs/$1.mock.out" "$TMP/runs/$1.mock.err" >&2
    die "mock-aws did not start on 127.0.0.1:$MOCK_PORT"
}

WARMUP_FAILURES=0
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
        -c "SELECT aws_sagemaker.invoke_endpoint('score', NULL, 1, 2)" \
        -c "SELECT aws_comprehend.detect_sentiment('good', 'en')" 2>&1) || true
    if [[ $out != $'3\n(POSITIVE,0.6666667)' ]]; then
        log "warm-up ML statements through pgenrich gave unexpected output:"
        sed 's/^/    | /' <<<"$out" >&2
        WARMUP_FAILURES=$((WARMUP_FAILURES + 1))
    fi
}

running() { # PID: alive and not a zombie (kill -0 succeeds on a zombie)
    [[ -n ${1:-} && -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
vm_kb() { # PID FIELD -> kB from /proc/PID/status, or NA
    local v=""
    [[ -r /proc/$1/status ]] && v=$(awk -v f="$2:" '$1 == f {print $2; exit}' "/proc/$1/status" 2>/dev/null)
    echo "${v:-NA}"
}

# Samples pgenrich's VmRSS every SAMPLE_SECS into FILE as "unix_time kB" lines, and kills
# pgenrich (writing FILE.killed) when it exceeds RSS_LIMIT_MB.
start_sampler() { # FILE
    local file=$1 pid=$PGENRICH_PID limit_kb=$((RSS_LIMIT_MB * 1024))
    : >"$file"
    (
        set +e
        trap 'exit 0' TERM
        while [[ -r /proc/$pid/status ]]; do
            rss=""
            while read -r key value _; do
                [[ $key == VmRSS: ]] && { rss=$value; break; }
            done <"/proc/$pid/status" 2>/dev/null
            [[ -z $rss ]] && break
            echo "$EPOCHREALTIME $rss" >>"$file"
            if ((rss > limit_kb)); then
                echo "$rss" >"$file.killed"
                kill -KILL "$pid" 2>/dev/null
                break
            fi
            sleep "$SAMPLE_SECS"
        done
    ) &
    SAMPLER_PID=$!
}
max_sample() { # FILE [FROM [TO]] -> largest sampled kB in the (unix time) window, or NA
    awk -v from="${2:-0}" -v to="${3:-1e12}" '$1 >= from && $1 <= to && $2 > m {m = $2}
        END {print (m ? m : "NA")}' "$1"
}

kv() { # FILE KEY -> the value of the first KEY=value word in FILE, or NA
    awk -v k="$2" '{for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) {print substr($i, length(k) + 2); found = 1; exit}}
        END {if (!found) print "NA"}' "$1"
}

# run_client OUTFILE COMMAND... -> exit status of the client (124 on timeout)
run_client() {
    local out=$1 rc=0
    shift
    timeout --kill-after=10 "$RUN_TIMEOUT" "$@" >"$out" 2>&1 </dev/null &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# 4. Runs
# ---------------------------------------------------------------------------------------------
FAILURES=0
RESULTS="$TMP/results.tsv"
# scenario rep status rows expected total_s idle_kb max_sample_kb hwm_kb stall_kb after_kb note calls
: >"$RESULTS"

# measure SCENARIO REP EXPECTED_ROWS EXPECTED_TAG CLIENT_COMMAND...: one run with a fresh
# pgenrich and mock-aws (@PORT@ in the command stands for pgenrich's port); the client's output line is checked against the expected row count and
# tag (NA: not checked), and against null_last=0, mismatched=0 (when printed).
measure() {
    local scenario=$1 rep=$2 expected=$3 tag=$4
    shift 4
    local label="$scenario-r$rep" rc=0 status=ok note="" problems=()
    local out="$TMP/runs/$label.client" samples="$TMP/runs/$label.rss"
    local idle hwm max stall_kb=NA after_kb=NA rows total got_tag v start end log_lines calls
    start_mock "$label"
    start_pgenrich "$label"
    idle=$(vm_kb "$PGENRICH_PID" VmRSS)
    log_lines=$(wc -l <"$TMP/runs/$label.pgenrich.log")
    start_sampler "$samples"
    run_client "$out" "${@//@PORT@/$PGENRICH_PORT}" || rc=$?
    hwm=$(vm_kb "$PGENRICH_PID" VmHWM)
    stop_sampler
    max=$(max_sample "$samples")
    rows=$(kv "$out" rows)
    total=$(kv "$out" total_s)
    start=$(kv "$out" stall_start)
    end=$(kv "$out" stall_end)
    if [[ $start != NA && $end != NA ]]; then
        stall_kb=$(max_sample "$samples" "$start" "$end")
        after_kb=$(max_sample "$samples" "$end")
    fi
    ((rc == 0)) || problems+=("client exit status $rc$( ((rc == 124)) && echo " (timed out after ${RUN_TIMEOUT}s)")")
    [[ $rows == "$expected" ]] || problems+=("rows=$rows, expected $expected")
    got_tag=$(kv "$out" tag)
    [[ $tag == NA || $got_tag == "$tag" ]] || problems+=("CommandComplete tag ${got_tag//_/ }, expected ${tag//_/ }")
    for v in null_last mismatched sessions_ok; do
        local got want=0
        got=$(kv "$out" "$v")
        [[ $v == sessions_ok ]] && want=$SESSIONS
        [[ $got == NA || $got == "$want" ]] || problems+=("$v=$got, expected $want")
    done
    if [[ -s $samples.killed ]]; then
        problems+=("pgenrich killed by the watchdog at VmRSS $(($(cat "$samples.killed") / 1024)) MB > RSS_LIMIT_MB=$RSS_LIMIT_MB")
        note="killed at > $RSS_LIMIT_MB MB"
        hwm=$(cat "$samples.killed")
        wait "$PGENRICH_PID" 2>/dev/null || true   # reap it, so that it no longer counts as alive
        PGENRICH_PID=""
    elif ! running "$PGENRICH_PID"; then
        problems+=("pgenrich is no longer running")
    fi
    if ((${#problems[@]} > 0)); then
        status=FAIL
        FAILURES=$((FAILURES + 1))
        [[ -n $note ]] || note=$(IFS=';'; echo "${problems[*]}" | cut -c1-120)
        {
            log "FAILED: $label: $(IFS=';'; echo "${problems[*]}")"
            sed 's/^/    | /' "$out" | tail -n 20
            log "pgenrich log:"
            sed 's/\x1b\[[0-9;]*m//g' "$TMP/runs/$label.pgenrich.log" | tail -n 20 | sed 's/^/    | /'
        } >&2
    fi
    stop_pgenrich
    stop_mock
    [[ $hwm == NA && $max != NA ]] && hwm=$max
    # Service calls: the sum of calls= over pgenrich's "ML statement" log lines of this run (the
    # warm-up's lines come before log_lines).
    calls=$(tail -n +"$((log_lines + 1))" "$TMP/runs/$label.pgenrich.log" | sed 's/\x1b\[[0-9;]*m//g' \
        | awk '/ML statement/ {for (i = 1; i <= NF; i++) if (index($i, "calls=") == 1) {n += substr($i, 7); found = 1}}
               END {print (found ? n : "NA")}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$rep" "$status" "$rows" "$expected" \
        "$total" "$idle" "$max" "$hwm" "$stall_kb" "$after_kb" "${note:-—}" "$calls" >>"$RESULTS"
    log "  $label: $status $(head -n 1 "$out"); pgenrich VmRSS ${idle} kB idle, max sampled ${max} kB, VmHWM ${hwm} kB, ${calls} service calls$([[ $stall_kb != NA ]] && echo ", max during stall ${stall_kb} kB, after ${after_kb} kB")"
}

BIG_SQL="SELECT repeat('x', $PAD_BYTES) AS pad, aws_comprehend.detect_sentiment('hi', 'en') FROM generate_series(1, $BIG_ROWS)"
SESSION_SQL="SELECT g, aws_sagemaker.invoke_endpoint('score', NULL, g) FROM generate_series(1, $SESSION_ROWS) g"
STREAM_SQL="SELECT id, aws_sagemaker.invoke_endpoint('score', NULL, a) FROM t"
RESIDUAL_SQL="SELECT id FROM t WHERE aws_sagemaker.invoke_endpoint('score', NULL, a)::float8 > $THRESHOLD"
STREAM_CONN="host=127.0.0.1 port=@PORT@ user=postgres dbname=postgres sslmode=disable"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "settings: BIG_ROWS=$BIG_ROWS × $PAD_BYTES B, stall ${STALL_SECS} s after $STALL_AFTER B, $SESSIONS sessions × $SESSION_ROWS rows, t=$T_ROWS rows, REPEAT=$REPEAT, mock-aws ${LATENCY_MS} ms; pgenrich ${PGENRICH_FLAGS[*]:-(defaults)}"

log "unlimited-execute: Parse/Bind/Execute(2147483647)/Sync, $BIG_ROWS rows × $PAD_BYTES B"
measure unlimited-execute 1 "$BIG_ROWS" "SELECT_$BIG_ROWS" \
    "$RAW_BIN" --extended --max-rows 2147483647 "127.0.0.1:@PORT@" "$BIG_SQL"

log "stalled-reader: simple Query, $BIG_ROWS rows × $PAD_BYTES B, ${STALL_SECS} s stall after $STALL_AFTER B"
measure stalled-reader 1 "$BIG_ROWS" "SELECT_$BIG_ROWS" \
    "$RAW_BIN" --stall-after-bytes "$STALL_AFTER" --stall-secs "$STALL_SECS" "127.0.0.1:@PORT@" "$BIG_SQL"

log "$SESSIONS-sessions: $SESSIONS connections × $SESSION_ROWS rows, simple Query"
measure "$SESSIONS-sessions" 1 "$((SESSIONS * SESSION_ROWS))" "SELECT_$SESSION_ROWS" \
    "$RAW_BIN" --sessions "$SESSIONS" --check-equal "127.0.0.1:@PORT@" "$SESSION_SQL"

log "residual vs streaming over t ($T_ROWS rows; $RESIDUAL_ROWS pass the residual's condition): $REPEAT run(s) each, interleaved"
for ((rep = 1; rep <= REPEAT; rep++)); do
    measure streaming "$rep" "$T_ROWS" NA "$STREAM_BIN" "$STREAM_CONN" "$STREAM_SQL"
    measure residual "$rep" "$RESIDUAL_ROWS" NA "$STREAM_BIN" "$STREAM_CONN" "$RESIDUAL_SQL"
done

# ---------------------------------------------------------------------------------------------
# 5. Results
# ---------------------------------------------------------------------------------------------
col() { # SCENARIO COLUMN -> values of successful runs
    awk -F'\t' -v s="$1" -v c="$2" '$1 == s && $3 == "ok" && $c != "NA" {print $c}' "$RESULTS"
}
allcol() { # SCENARIO COLUMN -> values of every run
    awk -F'\t' -v s="$1" -v c="$2" '$1 == s && $c != "NA" {print $c}' "$RESULTS"
}
maximum() { sort -g | tail -n 1 | awk 'END {print (NR ? $1 : "NA")}'; }
num() { # 1234567.8 -> 1,234,568
    [[ $1 == NA ]] && echo NA || awk -v x="$1" 'BEGIN {printf "%.0f", x}' | sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta'
}
mb() { [[ $1 == NA ]] && echo NA || awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }
secs() { [[ $1 == NA ]] && echo NA || awk -v s="$1" 'BEGIN {printf "%.2f s", s}'; }
rss_met() { # KB -> yes / no
    [[ $1 == NA ]] && echo "no (no figure)" || awk -v k="$1" -v t="$TARGET_RSS_MB" 'BEGIN {print (k / 1024 <= t) ? "yes" : "**no**"}'
}
failed_runs() { awk -F'\t' -v s="$1" '$1 == s && $3 != "ok"' "$RESULTS" | wc -l; }
runs_of() { awk -F'\t' -v s="$1" '$1 == s' "$RESULTS" | wc -l; }

report() {
    local commit dirty=""
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || dirty="+dirty"
    echo "## pgenrich end-to-end memory benchmark"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$dirty, $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo) RAM" \
         "(load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end); PostgreSQL $PG_VERSION; mock-aws at $LATENCY_MS ms;" \
         "pgenrich, PostgreSQL, mock-aws and the client all on this host, on 127.0.0.1"
    echo "- pgenrich at its defaults$([[ ${#PGENRICH_FLAGS[@]} -gt 0 ]] && echo " plus \`${PGENRICH_FLAGS[*]}\`")" \
         "(only \`--listen\`, \`--upstream\`, \`--upstream-tls-mode disable\`, \`--aws-region\` and the mock-aws endpoint URLs given);" \
         "a fresh pgenrich and mock-aws per run, warmed up by one tiny ML statement per function"
    echo "- peak RSS: VmHWM of pgenrich's process at the end of the run (lifetime peak; the warm-up included);" \
         "VmRSS sampled every ${SAMPLE_SECS} s alongside (a run shorter than that has one sample, taken before the statement). Target: peak RSS ≤ $TARGET_RSS_MB MB"
    echo
    echo "| scenario | statement | rows | time | rows/s | RSS idle | max sampled VmRSS | peak RSS (VmHWM) | RSS ≤ $TARGET_RSS_MB MB | status |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|---|---|"
    local s stmt rows total rps idle max hwm status n
    for s in unlimited-execute stalled-reader "$SESSIONS-sessions"; do
        case $s in
            unlimited-execute) stmt="extended protocol, Execute max_rows 2147483647: $BIG_ROWS rows × $(num "$PAD_BYTES") B pad + \`detect_sentiment('hi','en')\`" ;;
            stalled-reader) stmt="simple Query, the same statement; client reads $(num "$STALL_AFTER") B, stops reading ${STALL_SECS} s, reads the rest" ;;
            *) stmt="$SESSIONS connections at once, simple Query, each \`SELECT g, invoke_endpoint('score', NULL, g) FROM generate_series(1, $SESSION_ROWS) g\`" ;;
        esac
        IFS=$'\t' read -r _ _ status rows _ total idle max hwm _ _ note _ < <(awk -F'\t' -v s="$s" '$1 == s' "$RESULTS" | head -n 1) || true
        rps=$([[ $rows =~ ^[0-9]+$ && $total != NA ]] && awk -v r="$rows" -v t="$total" 'BEGIN {printf "%.0f", r / t}' || echo NA)
        echo "| $s | $stmt | $(num "$rows") | $(secs "$total") | $(num "$rps") | $(mb "$idle") | $(mb "$max") |" \
             "$([[ $note == killed* ]] && echo "> $RSS_LIMIT_MB MB (killed)" || mb "$hwm") | $(rss_met "$hwm") |" \
             "$([[ $status == ok ]] && echo ok || echo "**FAIL**: $note") |"
    done
    IFS=$'\t' read -r _ _ _ _ _ _ _ _ _ stall after _ < <(awk -F'\t' '$1 == "stalled-reader"' "$RESULTS" | head -n 1) || true
    echo
    echo "stalled-reader: largest VmRSS sample during the ${STALL_SECS} s stall $(mb "$stall"); after it, while the rest was read," \
         "$([[ $after == NA ]] && echo "no sample (the rest took less than ${SAMPLE_SECS} s; VmHWM covers it)" || mb "$after")."
    echo
    echo "### Residual vs streaming"
    echo
    echo "t: $(num "$T_ROWS") rows (\`id\`, \`a = id % 1000\`); the residual's condition passes $(num "$RESIDUAL_ROWS") of them." \
         "Its $(num 1000) distinct ML inputs are each sent once per statement (see calls below), so the forms compare pgenrich's statement machinery rather than inference." \
         "rows/s = $(num "$T_ROWS") input rows / elapsed, for both forms; medians of $REPEAT run(s) each (interleaved), client \`examples/ml_stream_client.rs\` (simple protocol)."
    echo
    echo "| form | statement | rows returned | median time | median rows/s (input) | max peak RSS | RSS ≤ $TARGET_RSS_MB MB | runs ok |"
    echo "|---|---|--:|--:|--:|--:|---|--:|"
    local f med_s med_rps hwm_max
    declare -A RPS=()
    for f in streaming residual; do
        [[ $f == streaming ]] && stmt="\`$STREAM_SQL\`" || stmt="\`$RESIDUAL_SQL\`"
        med_s=$(col "$f" 6 | median)
        med_rps=$([[ $med_s == NA ]] && echo NA || awk -v n="$T_ROWS" -v t="$med_s" 'BEGIN {printf "%.0f", n / t}')
        RPS[$f]=$med_rps
        hwm_max=$(allcol "$f" 9 | maximum)
        n=$(col "$f" 6 | wc -l)
        echo "| $f | $stmt | $(num "$([[ $f == streaming ]] && echo "$T_ROWS" || echo "$RESIDUAL_ROWS")") | $(secs "$med_s") |" \
             "$(num "$med_rps") | $(mb "$hwm_max") | $(rss_met "$hwm_max") | $n of $(runs_of "$f") |"
    done
    local ratio met
    if [[ ${RPS[streaming]} != NA && ${RPS[residual]} != NA ]]; then
        ratio=$(awk -v r="${RPS[residual]}" -v s="${RPS[streaming]}" 'BEGIN {printf "%.2f", r / s}')
        met=$(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN {print (r >= t) ? "met" : "**missed**"}')
    else
        ratio=NA
        met="**no figure** (runs failed)"
    fi
    echo
    echo "**residual ÷ streaming = $ratio** (target ≥ $TARGET_RATIO: $met)"
    echo
    echo "### Every run"
    echo
    echo "calls: the InvokeEndpoint / BatchDetectSentiment calls of the run's ML statements, per pgenrich's log" \
         "(each distinct input is sent once per statement)."
    echo
    echo "| scenario | run | status | rows (expected) | time | rows/s (returned) | calls | RSS idle | max sampled VmRSS | VmHWM | note |"
    echo "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|"
    awk -F'\t' '
        function mb(k) { return (k == "NA") ? "NA" : sprintf("%.1f MB", k / 1024) }
        { printf "| %s | %s | %s | %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5,
            ($6 == "NA" ? "NA" : sprintf("%.2f s", $6)), (($6 == "NA" || $4 == "NA") ? "NA" : sprintf("%.0f", $4 / $6)),
            $13, mb($7), mb($8), mb($9), $12 }' "$RESULTS"
    if ((FAILURES > 0)); then
        echo
        echo "**$FAILURES run(s) failed** (left out of the medians); details on stderr."
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
    log "$FAILURES run(s) failed"
    exit 1
fi
exit 0
