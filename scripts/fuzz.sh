#!/usr/bin/env bash
# Runs pgenrich's fuzz targets (fuzz/, cargo fuzz on the nightly toolchain) one after another,
# each for a fixed time, and prints a Markdown table of executions and crashes per target.
#
#   FUZZ_SECS=120          seconds per target
#   TARGETS="frames sql"   targets to run (default: all)
#   FUZZ_JOBS=1           fuzzing processes per target (libFuzzer's -fork=N when over 1: one
#                          run on N cores; executions are summed over its jobs)
#   FUZZ_SANITIZER=none    none (default: pgenrich denies unsafe code outside three FFI
#                          calls, and without ASan the fuzzers run about twice as fast)
#                          or address
#
# Each target grows its corpus in fuzz/corpus/<target> (not committed), starting from
# fuzz/seeds/<target> where there is one. A crash leaves its input in fuzz/artifacts/<target>;
# the script then exits non-zero. With the same build settings:
#
#   scripts/fuzz.sh replay <target> <file>   run one input (shows the panic)
#   scripts/fuzz.sh tmin <target> <file>     minimise a crashing input
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FUZZ_SECS=${FUZZ_SECS:-120}
ALL_TARGETS="frames tracker relay startup sql sql_ast csv aws_response"
TARGETS=${TARGETS:-$ALL_TARGETS}
SANITIZER=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-1}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "FUZZ_JOBS must be a positive integer, got '$JOBS'" >&2; exit 2; }
fork=()
((JOBS > 1)) && fork=(-fork="$JOBS")

# Longest input per target: realistic sizes rather than whatever the fuzzer grows to.
max_len() {
    case $1 in
        startup) echo 10240 ;;  # just over the 10,000-byte startup packet limit
        sql) echo 4096 ;;        # the target ignores longer texts (deep nesting is guarded apart)
        sql_ast) echo 256 ;;     # bytes of choices, not text
        relay | aws_response) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked || exit 1
fi

# Coverage instrumentation for pgenrich and the parsers it feeds, not all of its dependencies.
# The marker flag makes cargo rebuild what a build without the wrapper instrumented (cargo's
# fingerprints do not cover the wrapper).
export RUSTC_WRAPPER=$root/fuzz/coverage-wrapper.sh
export RUSTFLAGS="${RUSTFLAGS:-} --cfg pgenrich_fuzz_wrapper"
case ${1:-} in
    replay)
        exec cargo +nightly fuzz run -s "$SANITIZER" "$2" "$3"
        ;;
    tmin)
        exec cargo +nightly fuzz tmin -s "$SANITIZER" "$2" "$3"
        ;;
    "") ;;
    *)
        echo "usage: $0 [replay|tmin <target> <file>]" >&2
        exit 2
        ;;
esac

echo "building fuzz targets (sanitizer: $SANITIZER)"
cargo +nightly fuzz build -s "$SANITIZER" || exit 1

logs=$(mktemp -d)
rows=()
failed=0
for target in $TARGETS; do
    corpus=$root/fuzz/corpus/$target
    mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
    dirs=("$corpus")
    [[ -d $root/fuzz/seeds/$target ]] && dirs+=("$root/fuzz/seeds/$target")
    log=$logs/$target.log
    echo "fuzzing $target for ${FUZZ_SECS}s, $JOBS job(s) (log: $log)"
    cargo +nightly fuzz run -s "$SANITIZER" "$target" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECS" -max_len="$(max_len "$target")" -timeout=10 \
        -print_final_stats=1 "${fork[@]}" >"$log" 2>&1
    status=$?
    if ((JOBS > 1)); then
        # The parent's last progress line sums the jobs that have finished.
        runs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$log" | tail -n 1)
        secs=$(sed -n 's/^INFO: exiting: [0-9]* time: \([0-9]*\)s.*/\1/p' "$log" | tail -n 1)
        rate=""
        [[ -n $runs && -n $secs ]] && ((secs > 0)) && rate=$((runs / secs))
    else
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    fi
    artifacts=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tr '\n' ' ')
    if ((status != 0)) || [[ -n $artifacts ]]; then
        failed=1
        crashes="1: ${artifacts:-see $log}"
        tail -n 40 "$log"
    else
        crashes=0
    fi
    rows+=("| $target | ${secs:-$FUZZ_SECS} | ${runs:-?} | ${rate:-?} | $crashes |")
done

echo
echo "| target | seconds | executions | exec/s | crashes |"
echo "|---|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit $failed
