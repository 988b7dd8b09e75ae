#!/usr/bin/env bash
# Build a signed RAUC bundle (verity format) holding one root file system image:
#   images/rauc/make-bundle.sh --compatible C --version V --rootfs ROOTFS.ext4 \
#       --cert CERT --key KEY [--description D] OUT.raucb
# The bundle installs ROOTFS.ext4 into the inactive root slot (slot class "rootfs").
set -euo pipefail
usage() { sed -n '2,5p' "$0" >&2; exit 2; }
compatible= version= rootfs= cert= key= description= out=
while [ $# -gt 0 ]; do
    case $1 in
        --compatible) compatible=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --rootfs) rootfs=$2; shift 2 ;;
        --cert) cert=$2; shift 2 ;;
        --key) key=$2; shift 2 ;;
        --description) description=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "make-bundle.sh: unknown option $1" >&2; usage ;;
        *) out=$1; shift ;;
    esac
done
for v in compatible version rootfs cert key out; do
    [ -n "${!v}" ] || { echo "make-bundle.sh: --$v is required" >&2; usage; }
done
for f in "$rootfs" "$cert" "$key"; do
    [ -r "$f" ] || { echo "make-bundle.sh: cannot read $f" >&2; exit 1; }
done
command -v rauc >/dev/null || { echo "make-bundle.sh: rauc missing (cross/setup-debian.sh installs it)" >&2; exit 1; }
command -v mksquashfs >/dev/null || { echo "make-bundle.sh: mksquashfs missing (squashfs-tools)" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp --reflink=auto "$rootfs" "$dir/rootfs.ext4"
{
    echo "[update]"
    echo "compatible=$compatible"
    echo "version=$version"
    [ -z "$description" ] || echo "description=$description"
    echo
    echo "[bundle]"
    echo "format=verity"
    echo
    echo "[image.rootfs]"
    echo "filename=rootfs.ext4"
    # A hash per 4 KiB block of the image, in the bundle: a RAUC that streams the bundle then
    # fetches only the blocks it finds in none of the gateway's slots (adaptive update); a
    # RAUC without streaming installs the whole image as before.
    echo "adaptive=block-hash-index"
} > "$dir/manifest.raucm"
touch -d "@${SOURCE_DATE_EPOCH:-0}" "$dir"/*
rm -f "$out"
rauc bundle --cert="$cert" --key="$key" \
    --mksquashfs-args="-comp zstd -Xcompression-level 6 -all-root" \
    "$dir" "$out"
