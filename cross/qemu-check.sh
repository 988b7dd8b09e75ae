#!/usr/bin/env bash
# Run every cross-built binary under qemu-user: `--version`, `--check-config`
# on its sample config, and `--check-config` on broken configs, which must
# fail with one line naming the file (and field) and never panic.
#
# Usage: cross/qemu-check.sh [RELEASE_DIR]   (default out/release)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/env.sh
. cross/env.sh
dir=${1:-out/release}
version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'this is = = not toml\n' > "$tmp/bad-syntax.toml"
printf 'no_such_field = 1\n' > "$tmp/unknown-field.toml"

fail=0
check() { # description, command...
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; fi
}

expect_clear_error() { # runner binary config-file expected-substring
    local runner=$1 bin=$2 cfg=$3 want=$4 outf="$tmp/out" rc=0
    $runner "$bin" --check-config --config "$cfg" >"$outf" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then echo "  expected failure, got success"; return 1; fi
    if [ "$rc" -ge 100 ]; then echo "  exit code $rc (crash?)"; cat "$outf"; return 1; fi
    if grep -qiE 'panicked|RUST_BACKTRACE' "$outf"; then echo "  panicked:"; cat "$outf"; return 1; fi
    if [ "$(wc -l <"$outf")" -ne 1 ]; then echo "  not one line:"; cat "$outf"; return 1; fi
    if ! grep -qF -- "$cfg" "$outf" || ! grep -qF -- "$want" "$outf"; then
        echo "  message lacks file or '$want':"; cat "$outf"; return 1
    fi
}

for t in $SMARTER_TARGETS; do
    runner=$(smarter_runner_of "$t")
    for b in $SMARTER_BINARIES; do
        bin="$dir/$t/$b"
        svc=$(smarter_service_of "$b")
        kind=$(file -b "$bin")
        case "$t" in
            aarch64-*) check "$t $b is ARM aarch64 ($kind)" grep -q "ARM aarch64" <<<"$kind" ;;
            armv7-*) check "$t $b is ARM EABI5 ($kind)" grep -q "ARM, EABI5" <<<"$kind" ;;
        esac
        check "$t $b --version" bash -c "$runner '$bin' --version | grep -qx '$b $version'"
        check "$t $b --help" bash -c "$runner '$bin' --help | grep -q -- '--check-config'"
        check "$t $b --check-config sample" $runner "$bin" --check-config --config "services/$svc/config/$b.toml"
        check "$t $b missing config" expect_clear_error "$runner" "$bin" "$tmp/missing.toml" "cannot read"
        check "$t $b bad TOML" expect_clear_error "$runner" "$bin" "$tmp/bad-syntax.toml" ":1:"
        check "$t $b unknown field" expect_clear_error "$runner" "$bin" "$tmp/unknown-field.toml" "no_such_field"
        # A top-level string key of the sample, given a number instead.
        key=$(awk '/^\[/{exit} /^[a-z_]+ *= *"/{print $1; exit}' "services/$svc/config/$b.toml")
        printf '%s = 42\n' "$key" >"$tmp/wrong-type.toml"
        check "$t $b wrong type ($key)" expect_clear_error "$runner" "$bin" "$tmp/wrong-type.toml" "field \`$key\`"
    done
    for b in $SMARTER_OS_BINARIES; do
        bin="$dir/$t/$b"
        check "$t $b --version" bash -c "$runner '$bin' --version | grep -qx '$b $version'"
    done
    check "$t smarter-update health-gate --check-config sample" $runner "$dir/$t/smarter-update" health-gate --check-config --config services/update/config/health-gate.toml
    check "$t smarter-update agent --check-config sample" $runner "$dir/$t/smarter-update" agent --check-config --config services/update/config/update-agent.toml
    check "$t smarter-provision check sample" $runner "$dir/$t/smarter-provision" check services/provision/testdata/minimal.toml
done
exit $fail
