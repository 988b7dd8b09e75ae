#!/usr/bin/env bash
# Everything CI checks of meta-smarter and yocto/ (run as root by ./dev test):
#   - the crates list in meta-smarter matches Cargo.lock exactly (and the
#     check notices a missing and a stale crate), the recipe's cargo features
#     (the image's SQLite, every other default feature), every locked crate's
#     declared rust-version is within Rust 1.94;
#   - the kas lock files pin every layer (to the snapshot manifest's commits
#     when SMARTER_YOCTO_LAYERS has one);
#   - yocto-check-layer's rules that need no world build (check_layer.py);
#   - oelint-adv with meta-smarter/oelint.cfg;
#   - the kernel fragment against the options k3s's check-config.sh lists as
#     generally necessary (yocto/tests/k3s-check-config.txt), and that the
#     comparison notices a missing option;
#   - yocto/check for all six machines, then a misspelt RDEPENDS makes it fail
#     with bitbake's message.
# SMARTER_YOCTO_LAYERS: directory with the pinned layer snapshots
# (<line>/<repo>.git.tar, SHA256SUMS, MANIFEST.tsv); see yocto/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n----- yocto: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

: "${SMARTER_YOCTO_CACHE:=/var/cache/smarter/yocto}"
export SMARTER_YOCTO_CACHE
py=/usr/bin/python3

step "host setup"
yocto/setup.sh

step "crates.inc matches Cargo.lock"
$py meta-smarter/scripts/crates-inc.py --check
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A lock without its first crate: the .inc has a stale entry.
$py - Cargo.lock "$tmp/Cargo.lock" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = text.split("\n[[package]]\n")
for i, b in enumerate(blocks[1:], 1):
    if 'source = "registry+' in b:
        del blocks[i]
        break
open(sys.argv[2], "w").write("\n[[package]]\n".join(blocks))
PY
if $py meta-smarter/scripts/crates-inc.py --check --lock "$tmp/Cargo.lock" 2>"$tmp/err"; then
    echo "crates-inc.py --check passed with a crate removed from Cargo.lock" >&2; exit 1
fi
grep -q "stale: crate://" "$tmp/err"
# The committed .inc without its first crate: one is missing.
awk 'BEGIN{d=0} /crate:\/\// && !d {d=1; next} {print}' \
    meta-smarter/recipes-smarter/smarter-workspace/smarter-workspace-crates.inc >"$tmp/crates.inc"
if $py meta-smarter/scripts/crates-inc.py --check --output "$tmp/crates.inc" 2>"$tmp/err"; then
    echo "crates-inc.py --check passed with a crate missing from the .inc" >&2; exit 1
fi
grep -q "missing: crate://" "$tmp/err"
echo "crates.inc: ok (and a missing and a stale crate are both reported)"
$py yocto/tests/cargo_features.py

step "rust-version of every locked crate"
$py yocto/tests/msrv.py --rust 1.94.0

step "kas lock files"
manifest="${SMARTER_YOCTO_LAYERS:-}/MANIFEST.tsv"
if [ -n "${SMARTER_YOCTO_LAYERS:-}" ] && [ -f "$manifest" ]; then
    "$SMARTER_YOCTO_CACHE/venv/bin/python" yocto/lock.py --manifest "$manifest" --check
    echo "lock files: ok (every layer at the commit of $manifest)"
else
    "$SMARTER_YOCTO_CACHE/venv/bin/python" yocto/lock.py --check
    echo "lock files: ok (every layer pinned; no manifest given to compare with)"
fi

step "yocto-check-layer rules that need no world build"
$py yocto/tests/check_layer.py

step "oelint-adv"
# shellcheck disable=SC2046
OELINT_CONFIG=meta-smarter/oelint.cfg "$SMARTER_YOCTO_CACHE/venv/bin/oelint-adv" --quiet --relpaths \
    --jobs 1 $(find meta-smarter \( -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' \) | sort)
echo "oelint-adv: no findings"

step "kernel fragment against k3s's check-config.sh list"
$py yocto/tests/kernel_config.py
grep -v '^CONFIG_MEMCG=' meta-smarter/recipes-kernel/linux/files/smarter-k3s.cfg >"$tmp/k3s.cfg"
if $py yocto/tests/kernel_config.py --fragment "$tmp/k3s.cfg" 2>/dev/null; then
    echo "kernel_config.py passed with CONFIG_MEMCG removed" >&2; exit 1
fi

step "yocto/check (all machines)"
yocto/check

step "a broken recipe fails yocto/check"
yocto/tests/broken_recipe.sh qemuarm64
