#!/usr/bin/env bash
# Build (or reuse) the emulated gateway's Debian arm64 root filesystem tarball.
#
#   images/emulated/rootfs.sh            print the tarball's path, building it when not cached
#   images/emulated/rootfs.sh --key      print only the cache key
#
# The tarball holds Debian packages only (kernel, systemd, RAUC, Docker); our own binaries,
# units and configuration are added by images/emulated/build.sh when it assembles the disk
# image, so changing a service never rebuilds this. The cache lives outside the checkout under
# ${SMARTER_CACHE:-/var/cache/smarter}/emulated/, keyed by this script (package list, hooks,
# SOURCE_DATE_EPOCH) and the mirror.
#
# Speed: under qemu-user the initramfs is the slow part. Debian would build it twice
# (kernel postinst, then the initramfs-tools trigger) with MODULES=most; here update-initramfs
# is diverted to a no-op during the install, and rootfs-customize.sh runs it once with
# MODULES=list after pruning the kernel modules.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

SUITE=trixie
MIRROR=${SMARTER_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# Fixed so that the tarball does not depend on when it was built (see images/README.md).
export SOURCE_DATE_EPOCH=${SMARTER_ROOTFS_EPOCH:-1764547200}
# usr-is-merged: satisfies init-system-helpers' "usrmerge | usr-is-merged" once
# rootfs-customize.sh purges usrmerge (and the perl it pulls in).
# netcat-openbsd: a TCP/UDP probe for field debugging (and the HIL suite's app-to-app test).
PACKAGES=(
    systemd-sysv udev dbus kmod util-linux login passwd procps iproute2 e2fsprogs
    linux-image-arm64 initramfs-tools
    rauc rauc-service
    docker.io docker-cli
    netcat-openbsd
    usr-is-merged
)
# Two cached tarballs: the packages as mmdebstrap installed them (slow: minutes under
# qemu-user), and that tree after rootfs-customize.sh (module pruning, one initramfs).
# The base key covers what mmdebstrap's output depends on: suite, mirror, epoch, packages and
# the mmdebstrap command (the lines from "nice mmdebstrap" to the mirror argument).
base_key=$( { echo "$MIRROR $SUITE $SOURCE_DATE_EPOCH ${PACKAGES[*]}"
    sed -n '/^nice mmdebstrap/,/"\$SUITE" "\$tmp" "\$MIRROR"/p' "$0"; } | sha256sum | cut -c1-16)
key=$( { echo "$base_key"; cat "$HERE/rootfs-customize.sh"; } | sha256sum | cut -c1-16)
if [ "${1:-}" = "--key" ]; then echo "$key"; exit 0; fi

cache=${SMARTER_CACHE:-/var/cache/smarter}/emulated
base=$cache/base-$base_key.tar
out=$cache/rootfs-$key.tar
if [ -s "$out" ]; then echo "$out"; exit 0; fi

for t in mmdebstrap arch-test; do
    command -v "$t" >/dev/null || { echo "rootfs.sh: $t missing (cross/setup-debian.sh installs it)" >&2; exit 1; }
done
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --import qemu-aarch64 2>/dev/null || true
    update-binfmts --enable qemu-aarch64
fi
mkdir -p "$cache"
tmp=$base.tmp.$$
tree=$cache/tree.$$
trap 'rm -rf "$tmp" "$tree"' EXIT
if [ ! -s "$base" ]; then

echo "rootfs.sh: building $base (mmdebstrap, $SUITE arm64, several minutes)" >&2
nice mmdebstrap --arch=arm64 --variant=minbase --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
        printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs"; chmod 755 "$1/usr/sbin/update-initramfs"' \
    --customize-hook='rm -f "$1/usr/sbin/update-initramfs"
        chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
        rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log "$1"/var/log/apt/*' \
    "$SUITE" "$tmp" "$MIRROR"
mv "$tmp" "$base"
fi

echo "rootfs.sh: customizing into $out" >&2
mkdir "$tree"
tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base"
nice "$HERE/rootfs-customize.sh" "$tree" >&2  # stdout is the tarball path only
tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
    --clamp-mtime --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$out.tmp" .
mv "$out.tmp" "$out"
rm -rf "$tree"
# Keep the cache to the current pair.
find "$cache" -maxdepth 1 \( -name 'rootfs-*.tar' ! -name "rootfs-$key.tar" -o -name 'base-*.tar' ! -name "base-$base_key.tar" \) -delete
trap - EXIT
echo "$out"
