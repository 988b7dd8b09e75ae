#!/usr/bin/env bash
# smarter-cni vs the reference bridge + host-local plugins (Debian
# containernetworking-plugins), same machine, same run; never part of the tests.
#
# Both get the same network shape (bridge, gateway, default route, masquerade,
# hairpin) on their own bridge and subnet. Prints the median ADD+DEL cycle
# time of each (sequential cycles), the wall time of 20 parallel ADDs for
# each, and the ratios reference/ours (higher is better for us).
#
# Needs root, iproute2, nftables, iptables, python3 and /usr/lib/cni/{bridge,host-local}.
# Usage: bench/cni/run.sh [cycles]   (default 40)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -p smarter-cni --manifest-path "$ROOT/Cargo.toml" >&2
exec python3 "$HERE/bench.py" "$CARGO_TARGET_DIR/release/smarter-cni" "${1:-40}"
