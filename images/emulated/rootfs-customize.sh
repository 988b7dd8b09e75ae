#!/usr/bin/env bash
# Second stage of the emulated gateway's root file system (called by rootfs.sh on the extracted
# mmdebstrap tree): prune kernel modules to what the gateway needs, then build the initramfs
# once with only the modules that mount the root file system.
#   images/emulated/rootfs-customize.sh TREE
set -euo pipefail
tree=${1:?usage: rootfs-customize.sh TREE}

# Module directories (under /usr/lib/modules/<version>/) kept; everything else under kernel/ is
# removed: file systems, networking (Docker needs bridge, veth, netfilter, overlay),
# device-mapper (RAUC's verity bundles), virtio, char (virtio console), crypto and libraries.
KEEP_MODULES=(kernel/fs kernel/net kernel/crypto kernel/lib kernel/arch
    kernel/drivers/block kernel/drivers/md kernel/drivers/virtio kernel/drivers/char
    kernel/drivers/net/veth.ko kernel/drivers/net/tun.ko kernel/drivers/net/dummy.ko
    kernel/drivers/net/macvlan.ko kernel/drivers/net/ipvlan kernel/drivers/net/vxlan
    kernel/drivers/net/virtio_net.ko kernel/drivers/net/net_failover.ko)
# Modules the initramfs needs to mount an ext4 root on virtio-blk.
INITRD_MODULES=(virtio_mmio virtio_blk ext4)

for kdir in "$tree"/usr/lib/modules/*; do
    kver=${kdir##*/}
    mkdir "$kdir/keep"
    for m in "${KEEP_MODULES[@]}"; do
        [ -e "$kdir/$m" ] || continue
        mkdir -p "$kdir/keep/$(dirname "$m")"
        mv "$kdir/$m" "$kdir/keep/$m"
    done
    rm -rf "$kdir/kernel"
    mv "$kdir/keep/kernel" "$kdir/kernel"
    rmdir "$kdir/keep"
    chroot "$tree" depmod -a "$kver"
done

printf 'MODULES=list\nCOMPRESS=gzip\n' > "$tree/etc/initramfs-tools/conf.d/smarter.conf"
printf '%s\n' "${INITRD_MODULES[@]}" >> "$tree/etc/initramfs-tools/modules"
mount --bind /proc "$tree/proc"
mount --bind /dev "$tree/dev"
trap 'umount "$tree/proc" "$tree/dev"' EXIT
chroot "$tree" update-initramfs -c -k all

# Files the gateway never uses, removed to keep the slot (and every update bundle) small:
# device trees (QEMU and U-Boot pass their own), Docker's libnetwork test tools, containerd's
# debugging client and its v1 shims (Docker uses runc v2).
rm -rf "$tree"/usr/lib/linux-image-* "$tree"/usr/bin/dnet "$tree"/usr/sbin/ovrouter "$tree"/usr/bin/ctr \
    "$tree"/usr/bin/containerd-shim "$tree"/usr/bin/containerd-shim-runc-v1
