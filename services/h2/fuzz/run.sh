#!/usr/bin/env bash
# Fuzz smarter-h2's server connection (frames, HPACK, the connection state
# machine) for a bounded time (default 60 s).
# Usage: services/h2/fuzz/run.sh [seconds]
#
# Needs a nightly toolchain (`rustup toolchain install nightly --profile
# minimal`; ./dev setup installs it) and nothing else: the target is built
# with plain cargo and the instrumentation flags libFuzzer needs (SanitizerCoverage
# counters, comparison tracing, AddressSanitizer), which is what cargo-fuzz
# would pass. Not depending on cargo-fuzz saves CI compiling it on a fresh
# machine. `cargo +nightly fuzz run conn` works too, with cargo-fuzz.
set -euo pipefail
SECS=${1:-60}
cd "$(dirname "$0")"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
# Only the target's crates get the flags (--target keeps them off build
# scripts and proc macros).
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks"
cargo +nightly build --release --target "$host" --bin conn
mkdir -p corpus/conn artifacts/conn
exec "target/$host/release/conn" corpus/conn -artifact_prefix=artifacts/conn/ \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=1024
