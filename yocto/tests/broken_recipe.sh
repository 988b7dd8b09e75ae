#!/usr/bin/env bash
# A misspelt runtime dependency must make yocto/check fail with bitbake's own
# message. Adds a temporary append to the workspace recipe (removed on exit),
# runs the check for one machine and looks for bitbake's "Nothing RPROVIDES".
# The append only re-parses that one recipe, so this costs a warm run.
set -euo pipefail
cd "$(dirname "$0")/../.."
machine=${1:-qemuarm64}
append=meta-smarter/recipes-smarter/smarter-workspace/smarter-workspace_%.bbappend
if [ -e "$append" ]; then
    echo "broken_recipe.sh: $append exists already; refusing to overwrite it" >&2
    exit 1
fi
trap 'rm -f "$append"' EXIT
printf '# Temporary, written by yocto/tests/broken_recipe.sh\nRDEPENDS:smarter-dns += "iptabels"\n' >"$append"
out=$(mktemp)
trap 'rm -f "$append" "$out"' EXIT
if yocto/check --machines "$machine" >"$out" 2>&1; then
    cat "$out"
    echo "broken_recipe.sh: FAIL: yocto/check passed with a misspelt RDEPENDS" >&2
    exit 1
fi
if ! grep -q "Nothing RPROVIDES 'iptabels'" "$out"; then
    cat "$out"
    echo "broken_recipe.sh: FAIL: yocto/check failed, but without bitbake's message about 'iptabels'" >&2
    exit 1
fi
echo "broken_recipe.sh: ok: yocto/check failed with bitbake's message:"
grep -m3 "iptabels" "$out" | sed 's/^/    /'
