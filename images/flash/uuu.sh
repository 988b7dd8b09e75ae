#!/usr/bin/env bash
# Flash a SMARTER gateway image to the Coral Dev Board's eMMC over USB with
# NXP's uuu, after putting the provisioning file into the image's boot
# partition (validated first, by smarter-flash --image-only).
#
# Usage: images/flash/uuu.sh IMAGE.wic[.zst|.bz2|.xz|.gz] BOOTLOADER [PROVISION.toml]
#   BOOTLOADER: the flash.bin / imx-boot image of the same build.
# The board must be in USB serial-download mode (boot switches, see
# images/flash/README.md) and connected by its USB-C OTG port.
# Environment: UUU (default uuu), SMARTER_FLASH (default smarter-flash).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
image=$1 bootloader=$2 provision=${3:-}
uuu=${UUU:-uuu}
flasher=${SMARTER_FLASH:-smarter-flash}

for f in "$image" "$bootloader" ${provision:+"$provision"}; do
    [ -f "$f" ] || { echo "uuu.sh: $f: no such file" >&2; exit 2; }
done
command -v "$uuu" >/dev/null || { echo "uuu.sh: $uuu not found (https://github.com/nxp-imx/mfgtools)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "$provision" ]; then
    command -v "$flasher" >/dev/null || { echo "uuu.sh: $flasher not found" >&2; exit 2; }
    # The provisioning file goes into a decompressed copy; the original image is untouched.
    raw="$work/image.wic"
    case "$image" in
        *.zst) zstd -q -d -c "$image" >"$raw" ;;
        *.bz2) bzip2 -d -c "$image" >"$raw" ;;
        *.xz) xz -d -c "$image" >"$raw" ;;
        *.gz) gzip -d -c "$image" >"$raw" ;;
        *) cp --sparse=always "$image" "$raw" ;;
    esac
    "$flasher" --image-only --image "$raw" --provision "$provision"
    image=$raw
fi

echo "uuu.sh: writing $bootloader and $image to eMMC with $uuu (emmc_all)"
"$uuu" -b emmc_all "$bootloader" "$image"
echo "uuu.sh: done; set the boot switches back to eMMC and power-cycle the board"
