#!/usr/bin/env bash
# Build one libFuzzer target of a crate's fuzz/ directory and run it for a bounded time.
# Usage: cross/fuzz.sh FUZZ_DIR BIN SECONDS MAX_LEN
#   e.g. cross/fuzz.sh services/dns/fuzz request 60 1500
# (each fuzz/run.sh calls this with its own target).
#
# Needs a nightly toolchain (`rustup toolchain install nightly --profile minimal`; ./dev setup
# installs it) and nothing else: the target is built with plain cargo and the instrumentation
# flags libFuzzer needs (SanitizerCoverage counters, comparison tracing, AddressSanitizer), which
# is what cargo-fuzz would pass. Not depending on cargo-fuzz saves CI compiling it on a fresh
# machine; `cargo +nightly fuzz run BIN` in FUZZ_DIR works too, with cargo-fuzz.
# Corpus and crashes: FUZZ_DIR/corpus/BIN and FUZZ_DIR/artifacts/BIN.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: cross/fuzz.sh FUZZ_DIR BIN SECONDS MAX_LEN" >&2; exit 2; }
dir=$1 bin=$2 secs=$3 max_len=$4
cd "$dir"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
# Only the target's crates get the flags (--target keeps them off build scripts and proc macros).
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks"
cargo +nightly build --release --target "$host" --bin "$bin"
mkdir -p "corpus/$bin" "artifacts/$bin"
exec "target/$host/release/$bin" "corpus/$bin" -artifact_prefix="artifacts/$bin/" \
    -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb=1024
