#!/usr/bin/env bash
# Every check of images/, the one step `./dev test` runs for it:
#   1. host checks of the update configuration (images/rauc/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- images: host checks of RAUC configuration, boot scripts and bundles"
images/rauc/test.sh
