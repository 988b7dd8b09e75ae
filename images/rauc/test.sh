#!/usr/bin/env bash
# Host-level checks of the update configuration (no QEMU): every board's system.conf parses,
# every boot script compiles, the boot-env backend behaves, and RAUC accepts a good bundle and
# refuses a bundle signed by another CA, a bundle with a corrupted payload and a bundle with a
# corrupted signature.
#   images/rauc/test.sh [WORKDIR]      (default: out/images-test/rauc)
# Missing tools (rauc, mksquashfs, mkimage, openssl) make it SKIP, or FAIL when CI or
# SMARTER_REQUIRE_PEERS is set.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
work=${1:-$ROOT/out/images-test/rauc}

missing=()
for t in rauc mksquashfs mkimage openssl mkfs.ext4; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ -n "${CI:-}${SMARTER_REQUIRE_PEERS:-}" ]; then
        echo "FAIL: images/rauc/test.sh needs ${missing[*]} (cross/setup-debian.sh installs them)" >&2
        exit 1
    fi
    echo "SKIP: images/rauc/test.sh needs ${missing[*]}"
    exit 0
fi

fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; fails=$((fails + 1)); }
expect_fail() { # description, log, command...
    local what=$1 log=$2; shift 2
    if "$@" >"$log" 2>&1; then fail "$what: was accepted"; else pass "$what: refused: $(grep -v '^rauc-Message' "$log" | tail -1)"; fi
}

rm -rf "$work"
mkdir -p "$work"
export SOURCE_DATE_EPOCH=1700000000

# 1. Configuration files parse (rauc reads system.conf before anything else).
"$HERE/make-dev-ca.sh" "$work/dev" >/dev/null
"$HERE/make-dev-ca.sh" "$work/other" "Not the fleet owner" >/dev/null
mkdir -p "$work/payload"
head -c 300000 /dev/urandom > "$work/payload/blob"
mkfs.ext4 -q -d "$work/payload" -L rootfs "$work/rootfs.ext4" 4M
"$HERE/make-bundle.sh" --compatible smarter-qemuarm64 --version 0.0.1 --rootfs "$work/rootfs.ext4" \
    --cert "$work/dev/signing.cert.pem" --key "$work/dev/signing.key.pem" "$work/good.raucb" >/dev/null 2>&1
for conf in "$HERE"/*/system.conf; do
    board=$(basename "$(dirname "$conf")")
    if rauc --conf="$conf" info --keyring="$work/dev/ca.cert.pem" "$work/good.raucb" >"$work/conf-$board.log" 2>&1; then
        pass "system.conf for $board parses"
    else
        fail "system.conf for $board: $(tail -1 "$work/conf-$board.log")"
    fi
    compatible=$(sed -n 's/^compatible=//p' "$conf")
    [ "$compatible" = "smarter-$board" ] && pass "compatible of $board is $compatible" ||
        fail "compatible of $board is '$compatible', expected smarter-$board"
done

# 2. Boot scripts compile.
for cmd in "$ROOT"/images/boot/*.cmd; do
    if mkimage -A arm64 -O linux -T script -C none -d "$cmd" "$work/$(basename "$cmd" .cmd).scr" >/dev/null; then
        pass "$(basename "$cmd") compiles"
    else
        fail "$(basename "$cmd") does not compile"
    fi
done

# 3. The emulated gateway's boot-env backend.
export SMARTER_BOOT_ENV=$work/smarter-env.txt
be=$HERE/rauc-boot-env
check_be() { # expected, command...
    local want=$1 got; shift
    got=$("$be" "$@" 2>&1) || true
    [ "$got" = "$want" ] && pass "rauc-boot-env $*: $want" || fail "rauc-boot-env $*: got '$got', want '$want'"
}
check_be A get-primary
"$be" set-primary B; check_be B get-primary; check_be good get-state B
"$be" set-state B bad; check_be A get-primary; check_be bad get-state B
"$be" set-state B good; check_be good get-state B
printf 'BOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n\0' > "$SMARTER_BOOT_ENV"   # as U-Boot leaves it
check_be A get-primary
expect_fail "rauc-boot-env with an unknown slot" "$work/be.log" "$be" set-primary C
unset SMARTER_BOOT_ENV

# 4. Bundles.
if rauc info --keyring="$work/dev/ca.cert.pem" "$work/good.raucb" >"$work/info.log" 2>&1 &&
    grep -qE "Bundle Format:[[:space:]]*verity" "$work/info.log" &&
    rauc extract --keyring="$work/dev/ca.cert.pem" "$work/good.raucb" "$work/extracted" >>"$work/info.log" 2>&1 &&
    cmp -s "$work/rootfs.ext4" "$work/extracted/rootfs.ext4"; then
    pass "good bundle: verity format, signature and payload verified"
else
    fail "good bundle not accepted: $(tail -2 "$work/info.log")"
fi
"$HERE/make-bundle.sh" --compatible smarter-qemuarm64 --version 0.0.1 --rootfs "$work/rootfs.ext4" \
    --cert "$work/other/signing.cert.pem" --key "$work/other/signing.key.pem" "$work/other-key.raucb" >/dev/null 2>&1
expect_fail "bundle signed by another CA" "$work/other-key.log" \
    rauc info --keyring="$work/dev/ca.cert.pem" "$work/other-key.raucb"
size=$(stat -c %s "$work/good.raucb")
cp "$work/good.raucb" "$work/corrupt-payload.raucb"
printf '\377' | dd of="$work/corrupt-payload.raucb" bs=1 seek=$((size / 3)) conv=notrunc status=none
expect_fail "bundle with a corrupted payload byte" "$work/corrupt-payload.log" \
    rauc extract --keyring="$work/dev/ca.cert.pem" "$work/corrupt-payload.raucb" "$work/x-payload"
cp "$work/good.raucb" "$work/corrupt-sig.raucb"
printf '\377' | dd of="$work/corrupt-sig.raucb" bs=1 seek=$((size - 300)) conv=notrunc status=none
expect_fail "bundle with a corrupted signature byte" "$work/corrupt-sig.log" \
    rauc info --keyring="$work/dev/ca.cert.pem" "$work/corrupt-sig.raucb"
head -c $((size - 1000)) "$work/good.raucb" > "$work/truncated.raucb"
expect_fail "truncated bundle" "$work/truncated.log" \
    rauc info --keyring="$work/dev/ca.cert.pem" "$work/truncated.raucb"
# A bundle for another board verifies (the signature is fine) but names another compatible;
# the gateway's rauc install refuses it (checked under QEMU by images/emulated/test.sh).
"$HERE/make-bundle.sh" --compatible smarter-raspberrypi4-64 --version 0.0.1 --rootfs "$work/rootfs.ext4" \
    --cert "$work/dev/signing.cert.pem" --key "$work/dev/signing.key.pem" "$work/other-compat.raucb" >/dev/null 2>&1
info=$(rauc info --keyring="$work/dev/ca.cert.pem" "$work/other-compat.raucb" 2>/dev/null || true)
grep -qE "Compatible:[[:space:]]*'smarter-raspberrypi4-64'" <<<"$info" &&
    pass "bundle for another board carries its compatible" || fail "compatible not in bundle"

rauc info --keyring="$work/dev/ca.cert.pem" --output-format=json "$work/good.raucb" 2>/dev/null |
    python3 -c 'import json,sys; i=json.load(sys.stdin)["images"]; sys.exit(0 if all("block-hash-index" in x.get("rootfs",{}).get("adaptive",[]) for x in i) and i else 1)' &&
    pass "bundle's root file system image is adaptive (block-hash-index)" || fail "bundle not adaptive"

if [ "$fails" -gt 0 ]; then echo "images/rauc/test.sh: $fails check(s) failed" >&2; exit 1; fi
echo "images/rauc/test.sh: all checks passed"
