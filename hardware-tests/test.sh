#!/usr/bin/env bash
# CI's part of the hardware-in-the-loop suite:
#   hardware-tests/test.sh            the environment files of every board load in labgrid with
#                                     the resources and drivers they need, and the app test's
#                                     k3s back end is checked against a stand-in gateway and
#                                     CRI's schema (no board attached; needs protoc)
#   hardware-tests/test.sh --qemu     also the gateway tests on the emulated gateway
#                                     (out/emulated/disk.img, built by ./dev release; the
#                                     update tests' bundles are built when missing)
# The pinned tools (requirements.txt) go into a venv outside the checkout, under
# ${SMARTER_CACHE:-/var/cache/smarter}/hil-venv-<hash of requirements.txt>, made once.
# Results: out/hil/<env>.xml (JUnit) and out/hil/summary-<env>.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
qemu=
[ "${1:-}" = "--qemu" ] && qemu=1

cache=${SMARTER_CACHE:-/var/cache/smarter}
venv=$cache/hil-venv-$(sha256sum "$here/requirements.txt" | cut -c1-12)
if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$here/requirements.txt"
    touch "$venv/.complete"
fi
out=$root/out/hil
mkdir -p "$out"
cd "$here"
"$venv/bin/pytest" -q -p no:cacheprovider --junitxml="$out/environments.xml" \
    tests/test_environments.py tests/test_apps_offline.py
if [ -n "$qemu" ]; then
    # The update tests' bundles (images/test.sh builds them too; built here when missing).
    for v in update broken; do
        [ -s "$root/out/emulated/variants/$v.raucb" ] ||
            nice "$root/images/emulated/build.sh" --variant "$v" --modify "$root/images/emulated/variants/$v.sh"
    done
    "$venv/bin/pytest" -v -p no:cacheprovider --lg-env env/qemu.yaml --lg-log "$out/qemu-log" \
        --junitxml="$out/qemu.xml" --hil-summary "$out/summary-qemu.md" tests/
fi
