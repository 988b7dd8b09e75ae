#!/usr/bin/env bash
# Second stage of the emulated gateway's root file system (called by rootfs.sh on the extracted
# mmdebstrap tree): prune kernel modules to what the gateway needs, then build the initramfs
# once with only the modules that mount the root file system.
#   images/emulated/rootfs-customize.sh TREE
set -euo pipefail
tree=${1:?usage: rootfs-customize.sh TREE}

# Module directories (under /usr/lib/modules/<version>/) kept; everything else under kernel/ is
# removed: the file systems the gateway mounts (ext4 slots and data, the boot FAT, Docker's
# overlay, RAUC's squashfs bundles, 9p for the test harness, FUSE), the networking Docker and the
# CNI use (netfilter, bridge, veth, VXLAN, IPVS, traffic control), device-mapper (RAUC's verity
# bundles), virtio, char (virtio console), USB host and serial adapters (hotplugged devices the
# device manager turns into resources), crypto and libraries. Wireless, Bluetooth, NFS and the
# other file systems are what a gateway image does not carry.
KEEP_MODULES=(kernel/fs/ext4 kernel/fs/jbd2 kernel/fs/mbcache.ko kernel/fs/overlayfs kernel/fs/fat
    kernel/fs/nls kernel/fs/squashfs kernel/fs/9p kernel/fs/fuse kernel/fs/autofs kernel/fs/binfmt_misc.ko
    kernel/fs/efivarfs
    kernel/net/netfilter kernel/net/bridge kernel/net/ipv4 kernel/net/ipv6 kernel/net/sched
    kernel/net/802 kernel/net/8021q kernel/net/llc kernel/net/core kernel/net/xfrm kernel/net/key
    kernel/net/packet kernel/net/unix kernel/net/9p kernel/net/vmw_vsock
    kernel/crypto kernel/lib kernel/arch
    kernel/drivers/block kernel/drivers/md kernel/drivers/virtio kernel/drivers/char
    kernel/drivers/usb/core kernel/drivers/usb/common kernel/drivers/usb/host kernel/drivers/usb/serial
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
# A listed file matches with or without the compression suffix Debian may add (.ko.xz).
wanted = {m for m in deps if any(m == k or m.startswith(k + ".") or m.startswith(k.rstrip("/") + "/") for k in keep)}
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
# mmdebstrap merges /usr with the usrmerge package, which needs perl (50 MB); the tree is merged
# now, so both go (dpkg's own purge, so its database stays true).
# (dpkg refuses to purge a package that something else still needs).
# Chosen by name pattern, as installed: perl's version is in its package names.
mapfile -t purge < <(chroot "$tree" dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" &&
    $2 ~ /^(usrmerge|libfile-find-rule-perl|libnumber-compare-perl|libtext-glob-perl|perl|perl-modules-5\.[0-9]+|libperl5\.[0-9]+|libgdbm-compat4(t64)?)$/ { print $2 }')
[ "${#purge[@]}" -eq 0 ] || chroot "$tree" dpkg --purge "${purge[@]}"
# udev's hardware database (names of vendors and models) is not read by anything here.
rm -rf "$tree"/usr/lib/udev/hwdb.bin "$tree"/usr/lib/udev/hwdb.d
rm -rf "$tree"/usr/lib/linux-image-* "$tree"/usr/bin/dnet "$tree"/usr/sbin/ovrouter "$tree"/usr/bin/ctr \
    "$tree"/usr/bin/containerd-shim "$tree"/usr/bin/containerd-shim-runc-v1
