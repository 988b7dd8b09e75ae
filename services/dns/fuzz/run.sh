#!/usr/bin/env bash
# Fuzz smarter-dns's request path for a bounded time (default 60 s).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: services/dns/fuzz/run.sh [seconds]
set -euo pipefail
SECS=${1:-60}
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/request
exec cargo +nightly fuzz run request fuzz/corpus/request -- \
    -max_total_time="$SECS" -max_len=1500 -rss_limit_mb=1024
