#!/usr/bin/env bash
# rustc wrapper for the fuzz build (scripts/fuzz.sh sets RUSTC_WRAPPER to it): coverage
# instrumentation only for the crates the fuzz targets are about — pgenrich, the targets, and the
# parsers and decoders pgenrich hands untrusted bytes to. cargo fuzz instruments every crate;
# pgenrich links the AWS SDKs, tokio, rustls and tract, and libFuzzer scans all their ~500,000
# counters after every run, which took most of each execution's time in the lighter targets.
# Everything is still built with debug assertions and overflow checks.
#
# FUZZ_COVERED_CRATES overrides the list (crate names, space-separated). Cargo does not see the
# list, so a build with another list needs a checkout (target directory) of its own.
rustc=$1
shift
covered=${FUZZ_COVERED_CRATES:-pgenrich pgenrich_fuzz sqlparser pgwire aws_sdk_comprehend aws_sdk_sagemakerruntime aws_smithy_json}
crate=""
target=false
prev=""
for arg in "$@"; do
    [[ $prev == --crate-name ]] && crate=$arg
    [[ $arg == */fuzz_targets/*.rs || $arg == fuzz_targets/*.rs ]] && target=true
    prev=$arg
done
if $target || [[ " $covered " == *" $crate "* ]]; then
    exec "$rustc" "$@"
fi
kept=()
for arg in "$@"; do
    case $arg in
        -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
        *) kept+=("$arg") ;;
    esac
done
exec "$rustc" "${kept[@]}"
