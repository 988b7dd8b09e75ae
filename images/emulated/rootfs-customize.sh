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
    # Keep the listed directories and everything their modules depend on (modules.dep, as
    # Debian built it), so that e.g. dm-mod keeps dax.
    python3 - "$kdir" "${KEEP_MODULES[@]}" <<'PY'
import os, sys
kdir, keep = sys.argv[1], sys.argv[2:]
deps = {}
with open(os.path.join(kdir, "modules.dep")) as f:
    for line in f:
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
wanted = {m for m in deps if any(m == k or m.startswith(k.rstrip("/") + "/") for k in keep)}
todo = list(wanted)
while todo:
    for d in deps.get(todo.pop(), []):
        if d not in wanted:
            wanted.add(d)
            todo.append(d)
for m in deps:
    if m not in wanted:
        os.remove(os.path.join(kdir, m))
PY
    find "$kdir/kernel" -type d -empty -delete
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
