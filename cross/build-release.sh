#!/usr/bin/env bash
# Build every SMARTER service in release mode for the gateway targets (and
# the host, for amd64 images), then collect the binaries with a SHA-256
# manifest:
#
#   out/release/<triple>/<binary>
#   out/release/SHA256SUMS        (sha256sum -c compatible, relative paths)
#   out/release/sizes.tsv         (binary, triple, bytes)
#
# Usage: cross/build-release.sh [--out DIR] [TRIPLE...]
# Default triples: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
# x86_64-unknown-linux-gnu. Size settings live in [profile.release] of the
# root Cargo.toml (see docs/sizes.md for how they were chosen).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/env.sh
. cross/env.sh

out=out/release
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ "${#targets[@]}" -eq 0 ]; then
    # shellcheck disable=SC2206
    targets=($SMARTER_TARGETS x86_64-unknown-linux-gnu)
fi

# Reproducible builds: no absolute build paths in the binaries.
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$PWD=/smarter --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

rm -rf "$out"
mkdir -p "$out"
for t in "${targets[@]}"; do
    echo "== release build for $t"
    cargo build --release --locked --workspace --target "$t"
    mkdir -p "$out/$t"
    for b in $SMARTER_BINARIES $SMARTER_OS_BINARIES; do
        cp "$target_dir/$t/release/$b" "$out/$t/$b"
    done
done

(
    cd "$out"
    find . -type f ! -name SHA256SUMS ! -name sizes.tsv | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
    for t in "${targets[@]}"; do
        for b in $SMARTER_BINARIES $SMARTER_OS_BINARIES; do
            printf '%s\t%s\t%s\n' "$b" "$t" "$(stat -c %s "$t/$b")"
        done
    done > sizes.tsv
)
echo "== artifacts in $out"
cat "$out/sizes.tsv"
