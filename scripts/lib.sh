# Shell helpers shared by the end-to-end benchmarks and the quickstart (sourced, not run). They
# read the caller's TMP (the run's temp directory, with the cluster in $TMP/data), RUN_AS (the
# user PostgreSQL runs as when the script runs as root), PG_BIN and PG_STARTED, and call its log
# and die.

# Runs a command as the PostgreSQL user (initdb and postgres refuse to run as root).
as_pg() {
    if ((EUID == 0)); then
        (cd "$TMP" && runuser -u "$RUN_AS" -- "$@")
    else
        (cd "$TMP" && "$@")
    fi
}

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Wait up to $2 seconds for pid $1 to go away.
wait_gone() {
    local pid=$1 i
    for ((i = 0; i < $2 * 10; i++)); do alive "$pid" || return 0; sleep 0.1; done
    return 1
}

postmaster_pid() { [[ -s $TMP/data/postmaster.pid ]] && head -n 1 "$TMP/data/postmaster.pid"; }

# The median of the numbers on standard input, or NA when there are none.
median() {
    sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) print "NA"
        else if (NR % 2) print a[(NR + 1) / 2]
        else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Stops the cluster in $TMP/data if this run started it (PG_STARTED=1): fast, then harder.
stop_postgres() {
    local pid
    pid=$(postmaster_pid)
    if ((PG_STARTED)) && alive "$pid"; then
        log "stopping PostgreSQL (pid $pid)"
        as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m fast -w -t 30 stop >/dev/null 2>&1
        if alive "$pid"; then
            kill -QUIT "$pid" 2>/dev/null
            wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null
        fi
    fi
}

# The newest /usr/lib/postgresql/<version>/bin that has every tool named (initdb, pg_ctl and
# postgres when none is); fails when there is none.
find_pg_bin() {
    local dir tool tools=("$@")
    ((${#tools[@]})) || tools=(initdb pg_ctl postgres)
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n $dir ]] || return 1
    for tool in "${tools[@]}"; do [[ -x $dir/$tool ]] || return 1; done
    printf '%s\n' "$dir"
}

# Sets RUN_AS, the user PostgreSQL (and PgBouncer) run as: `postgres` when the script runs as
# root, since initdb, postgres and pgbouncer refuse to run as root; the caller otherwise.
pick_run_as() {
    if ((EUID == 0)); then
        RUN_AS=postgres
        id -u "$RUN_AS" >/dev/null 2>&1 || die "user '$RUN_AS' does not exist (it comes with the postgresql package)"
    else
        RUN_AS=$(id -un)
    fi
}

# Fails unless every command named is on PATH.
need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "'$tool' is required"
    done
}

# Clears the caller's environment of what could redirect or reconfigure a benchmark: libpq
# settings (every connection names host, port, user and database), pgenrich's config
# overrides (only the flags a script gives count) and AWS settings; connections are plain TCP
# (no SSLRequest/GSSENCRequest round trip on connect). PGENRICH_ARGS, the scripts' own knob, is
# kept in EXTRA_PGENRICH_ARGS first.
isolate_env() {
    EXTRA_PGENRICH_ARGS=${PGENRICH_ARGS:-}
    unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
          PGOPTIONS PGSSLMODE PGREQUIRESSL PGSSLNEGOTIATION PGGSSENCMODE PGTARGETSESSIONATTRS \
          PGCHANNELBINDING PGAPPNAME PGCONNECT_TIMEOUT PGDATA || true
    export PGSSLMODE=disable PGGSSENCMODE=disable
    local var
    while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(PGENRICH_|AWS_)' || true)
}

# Free loopback ports outside the usual ephemeral range; a port counts as free when nothing
# accepts a connection on it.
declare -A USED_PORTS=()
free_port() {
    local port i
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 10000))
        [[ -n ${USED_PORTS[$port]:-} ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS[$port]=1
            echo "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# Stops pgenrich (pid $PGENRICH_PID) if it runs: SIGTERM (graceful drain), after 10 s a second
# SIGTERM (exit now), after 5 s more SIGKILL. Clears PGENRICH_PID.
stop_pgenrich() {
    alive "${PGENRICH_PID:-}" || { PGENRICH_PID=""; return 0; }
    log "stopping pgenrich (pid $PGENRICH_PID)"
    kill -TERM "$PGENRICH_PID" 2>/dev/null || true
    if ! wait_gone "$PGENRICH_PID" 10; then
        log "pgenrich (pid $PGENRICH_PID) still running 10 s after SIGTERM; signalling again"
        kill -TERM "$PGENRICH_PID" 2>/dev/null || true
        wait_gone "$PGENRICH_PID" 5 || kill -KILL "$PGENRICH_PID" 2>/dev/null || true
    fi
    wait "$PGENRICH_PID" 2>/dev/null || true
    PGENRICH_PID=""
}

# Stops mock-aws (pid $MOCK_PID) if it runs: Ctrl-C, after 5 s SIGKILL. Clears MOCK_PID.
stop_mock() {
    alive "${MOCK_PID:-}" || { MOCK_PID=""; return 0; }
    kill -INT "$MOCK_PID" 2>/dev/null || true
    wait_gone "$MOCK_PID" 5 || kill -KILL "$MOCK_PID" 2>/dev/null || true
    wait "$MOCK_PID" 2>/dev/null || true
    MOCK_PID=""
}

# Dies unless every variable named holds a positive integer.
need_positive_ints() {
    local var
    for var in "$@"; do
        [[ ${!var} =~ ^[0-9]+$ ]] && ((${!var} >= 1)) || die "$var must be a positive integer, got '${!var}'"
    done
}

# A throw-away cluster in $TMP/data with trust authentication (superuser postgres).
init_trust_cluster() {
    as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=trust --no-locale -E UTF8 >"$TMP/initdb.log" 2>&1 \
        || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
}

# Starts the cluster in $TMP/data with the server options $1 (marking it this run's to stop).
start_cluster() {
    PG_STARTED=1
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 -o "$1" start >/dev/null 2>&1 \
        || { tail -n 30 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
}
