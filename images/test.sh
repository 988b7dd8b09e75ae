#!/usr/bin/env bash
# Every check of images/, the one step `./dev test` runs for it:
#   1. host checks of the update configuration (images/rauc/test.sh)
#   2. the emulated gateway under QEMU (images/emulated/test.py): boot, provisioning, update,
#      rollback, refused bundles, power cuts during installs. Uses out/emulated/disk.img from
#      `./dev release` (built here when missing) and builds the two test bundles.
# SMARTER_IMAGES_QEMU=0 runs only step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- images: host checks of RAUC configuration, boot scripts and bundles"
images/rauc/test.sh

[ "${SMARTER_IMAGES_QEMU:-1}" != 0 ] || exit 0
echo "--- images: emulated gateway"
if [ ! -s out/emulated/disk.img ]; then
    [ -s out/images/airgap/smarter-images-arm64.tar ] || nice python3 deploy/images/build.py
    nice images/emulated/build.sh
fi
for v in update broken; do
    nice images/emulated/build.sh --variant "$v" --modify "images/emulated/variants/$v.sh"
done
images/emulated/test.py
