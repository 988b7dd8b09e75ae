#!/usr/bin/env bash
# Every check of images/, the one step `./dev test` runs for it:
#   1. host checks of the update configuration (images/rauc/test.sh)
#   2. the emulated gateway under QEMU (images/emulated/test.py): boot, provisioning, A/B update,
#      automatic rollback, refused bundles, power cuts during installs. It needs the image from
#      `./dev release` (out/emulated); the update and broken-update bundles are built here.
#      SMARTER_IMAGES_QEMU=0 leaves it out (e.g. on a machine without the image).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- images: host checks of RAUC configuration, boot scripts and bundles"
images/rauc/test.sh

if [ "${SMARTER_IMAGES_QEMU:-1}" = 0 ]; then
    echo "--- images: QEMU tests of the emulated gateway left out (SMARTER_IMAGES_QEMU=0)"
    exit 0
fi
[ -s out/emulated/disk.img ] || { echo "images/test.sh: out/emulated/disk.img missing: run ./dev release first" >&2; exit 1; }
echo "--- images: the update and broken-update bundles"
nice images/emulated/build.sh --variant update --modify images/emulated/variants/update.sh
nice images/emulated/build.sh --variant broken --modify images/emulated/variants/broken.sh
nice images/emulated/build.sh --variant services --modify images/emulated/variants/services.sh
echo "--- images: the emulated gateway under QEMU"
images/emulated/test.py
