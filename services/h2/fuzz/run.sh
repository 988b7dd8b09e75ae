#!/usr/bin/env bash
# Fuzz smarter-h2's server connection (frames, HPACK, the connection state machine) for a
# bounded time (default 60 s); how: cross/fuzz.sh.
# Usage: services/h2/fuzz/run.sh [seconds]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../../cross/fuzz.sh" "$here" conn "${1:-60}" 4096
