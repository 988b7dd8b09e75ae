#!/usr/bin/env bash
# Flash a SMARTER gateway image to a Jetson Xavier (NX or AGX) in USB recovery
# mode with the tegraflash bundle meta-tegra builds, after putting the
# provisioning file into the bundle's FAT boot image (the EFI system
# partition, esp.img, which the Xavier image mounts at /boot).
#
# Usage: images/flash/tegraflash.sh BUNDLE.tegraflash.tar[.gz|.zst] [PROVISION.toml]
# Environment: BOOT_IMAGE (file in the bundle that receives the provisioning
# file, default esp.img), FLASH_CMD (default ./doflash.sh; ./initrd-flash for
# NVMe/USB root), SMARTER_FLASH (default smarter-flash).
# Needs root (USB access of the flashing tools).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
bundle=$1 provision=${2:-}
boot_image=${BOOT_IMAGE:-esp.img}
flash_cmd=${FLASH_CMD:-./doflash.sh}
flasher=${SMARTER_FLASH:-smarter-flash}

[ -f "$bundle" ] || { echo "tegraflash.sh: $bundle: no such file" >&2; exit 2; }
[ -z "$provision" ] || [ -f "$provision" ] || { echo "tegraflash.sh: $provision: no such file" >&2; exit 2; }

# NVIDIA's USB vendor id is 0955; in recovery mode a Xavier NX shows 0955:7e19
# and an AGX Xavier 0955:7019.
if command -v lsusb >/dev/null && ! lsusb -d 0955: >/dev/null; then
    echo "tegraflash.sh: no NVIDIA device in USB recovery mode found (lsusb -d 0955:); see images/flash/README.md" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$bundle" -C "$work"

if [ -n "$provision" ]; then
    command -v "$flasher" >/dev/null || { echo "tegraflash.sh: $flasher not found" >&2; exit 2; }
    if [ ! -f "$work/$boot_image" ]; then
        echo "tegraflash.sh: the bundle has no $boot_image; its images are:" >&2
        (cd "$work" && ls -- *.img 2>/dev/null) >&2 || true
        echo "tegraflash.sh: set BOOT_IMAGE to the FAT image of the partition mounted at /boot" >&2
        exit 2
    fi
    "$flasher" --image-only --image "$work/$boot_image" --provision "$provision"
fi

echo "tegraflash.sh: running $flash_cmd in the unpacked bundle"
(cd "$work" && $flash_cmd)
echo "tegraflash.sh: done; the board reboots from its internal storage"
