#!/usr/bin/env bash
# Every check of images/, the one step `./dev test` runs for it:
#   1. host checks of the update configuration (images/rauc/test.sh)
# The emulated gateway's QEMU tests (images/emulated/test.py) run by hand for now:
#   images/emulated/build.sh --variant update --modify images/emulated/variants/update.sh
#   images/emulated/build.sh --variant broken --modify images/emulated/variants/broken.sh
#   images/emulated/test.py
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- images: host checks of RAUC configuration, boot scripts and bundles"
images/rauc/test.sh
