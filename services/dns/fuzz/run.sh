#!/usr/bin/env bash
# Fuzz smarter-dns's request path for a bounded time (default 60 s); how: cross/fuzz.sh.
# Usage: services/dns/fuzz/run.sh [seconds]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../../cross/fuzz.sh" "$here" request "${1:-60}" 1500
