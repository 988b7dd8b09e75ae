#!/usr/bin/env bash
# Build the emulated qemuarm64 gateway: disk image, its .bmap, the root slot image and an update
# bundle, without loop devices (mkfs.ext4 -d, mkfs.vfat + mtools, sfdisk on a file, dd).
#
#   images/emulated/build.sh                 -> out/emulated/
#   images/emulated/build.sh --variant NAME --modify SCRIPT
#                                            -> out/emulated/variants/NAME.{ext4,raucb} only: the
#                                               same root file system with SCRIPT run on its tree
#                                               (the tests' update and broken-update bundles)
# Inputs: the Debian rootfs tarball (images/emulated/rootfs.sh, cached), the aarch64 release
# binaries (--bin-dir, default out/release/aarch64-unknown-linux-gnu), the arm64 air-gap image
# archive (--images-tar, default out/images/airgap/smarter-images-arm64.tar), signing keys
# (SMARTER_RAUC_KEYRING / SMARTER_RAUC_CERT / SMARTER_RAUC_KEY, else a development CA created
# once in out/emulated/keys). Two runs from one commit give identical files (images/README.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

out=$ROOT/out/emulated
bin_dir=$ROOT/out/release/aarch64-unknown-linux-gnu
images_tar=$ROOT/out/images/airgap/smarter-images-arm64.tar
variant= modify=
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --images-tar) images_tar=$2; shift 2 ;;
        --variant) variant=$2; shift 2 ;;
        --modify) modify=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -z "$variant" ] || [ -x "$modify" ] || { echo "build.sh: --variant needs --modify with an executable script" >&2; exit 2; }

# Sizes (MiB). The slot size is fixed for the life of a release line: every future bundle's
# root image must fit it.
BOOT_MIB=64
SLOT_MIB=768
DATA_MIB=256
COMPATIBLE=smarter-qemuarm64

need=(mkfs.ext4 debugfs mkfs.vfat mcopy sfdisk mkimage rauc mksquashfs bmaptool)
for t in "${need[@]}"; do
    command -v "$t" >/dev/null || { echo "build.sh: $t missing (cross/setup-debian.sh installs it)" >&2; exit 1; }
done
binaries=(smarter-device-manager smarter-cni smarter-dns smarter-debug-agent)
optional_binaries=(smarter-update smarter-provision)
for b in "${binaries[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "build.sh: $bin_dir/$b missing: run ./dev release (cross/build-release.sh) first" >&2; exit 1; }
done
[ -n "$variant" ] || [ -s "$images_tar" ] ||
    { echo "build.sh: $images_tar missing: run deploy/images/build.py first" >&2; exit 1; }

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C
umask 022
workspace_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
version=${workspace_version:-0.0.0}+g$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- 2>/dev/null || version=$version.dirty

rootfs_tar=$("$HERE/rootfs.sh")
mkdir -p "$out"

# Keys: a development CA unless a fleet owner's keys are given (docs/update-keys.md).
keyring=${SMARTER_RAUC_KEYRING:-} cert=${SMARTER_RAUC_CERT:-} key=${SMARTER_RAUC_KEY:-}
if [ -z "$keyring$cert$key" ]; then
    "$ROOT/images/rauc/make-dev-ca.sh" "$out/keys"
    keyring=$out/keys/ca.cert.pem cert=$out/keys/signing.cert.pem key=$out/keys/signing.key.pem
elif [ -z "$keyring" ] || [ -z "$cert" ] || [ -z "$key" ]; then
    echo "build.sh: set all of SMARTER_RAUC_KEYRING, SMARTER_RAUC_CERT and SMARTER_RAUC_KEY, or none" >&2
    exit 1
fi

# Staging on tmpfs: its directory order is creation order, so mkfs.ext4 -d lays out inodes
# the same way on every run (a host ext4 directory's order depends on its hash seed).
# noatime: mkfs.ext4 -d copies each file's atime, and reading a file would change it.
stage=$(mktemp -d /tmp/smarter-emulated.XXXXXX)
mount -t tmpfs -o noatime,mode=0755,size=3g tmpfs "$stage"
trap 'umount "$stage"; rmdir "$stage"' EXIT
tree=$stage/root
mkdir "$tree"
tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' -xpf "$rootfs_tar"

install_file() { # mode src dst
    install -D -m "$1" "$2" "$tree$3"
}

# --- our binaries, configuration and units
for b in "${binaries[@]}"; do install_file 0755 "$bin_dir/$b" "/usr/bin/$b"; done
for b in "${optional_binaries[@]}"; do
    if [ -x "$bin_dir/$b" ]; then install_file 0755 "$bin_dir/$b" "/usr/bin/$b"
    else echo "build.sh: note: $b not built yet; the image has no $b" >&2; fi
done
for f in services/*/config/*.toml services/device-manager/config/conf.yaml; do
    case $f in */smarter-comms.toml) continue ;; esac   # cloud side
    install_file 0644 "$f" "/etc/smarter/$(basename "$f")"
done
# Emulated-gateway settings (no kubelet, apps under Docker): metrics for the health gate,
# names from Docker's metadata.
edit() { # file sed-expression: fail if nothing changed
    local f=$tree$1 before
    before=$(sha256sum "$f")
    sed -i "$2" "$f"
    [ "$(sha256sum "$f")" != "$before" ] || { echo "build.sh: '$2' changed nothing in $1" >&2; exit 1; }
}
edit /etc/smarter/smarter-device-manager.toml 's|^metrics_address = ""|metrics_address = "127.0.0.1:9464"|'
edit /etc/smarter/smarter-dns.toml 's|^runtime = "none"|runtime = "docker"|'
cat "$HERE/files/device-rules.toml" >> "$tree/etc/smarter/smarter-device-manager.toml"
install_file 0644 "$HERE/files/health-gate.toml" /etc/smarter/health-gate.toml
for u in images/systemd/*.service images/systemd/*.mount "$HERE/files/smarter-images-load.service"; do
    install_file 0644 "$u" "/etc/systemd/system/$(basename "$u")"
    case $(basename "$u") in
        *.mount) ln -sf "../$(basename "$u")" "$tree/etc/systemd/system/local-fs.target.wants/$(basename "$u")" 2>/dev/null ||
            { mkdir -p "$tree/etc/systemd/system/local-fs.target.wants"; ln -sf "../$(basename "$u")" "$tree/etc/systemd/system/local-fs.target.wants/$(basename "$u")"; } ;;
        *) mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
           ln -sf "../$(basename "$u")" "$tree/etc/systemd/system/multi-user.target.wants/$(basename "$u")" ;;
    esac
done
# Docker, containerd and RAUC keep their state on /data: start them only once it is mounted.
for u in docker containerd rauc; do
    mkdir -p "$tree/etc/systemd/system/$u.service.d"
    printf '[Unit]\nRequiresMountsFor=/data\n' > "$tree/etc/systemd/system/$u.service.d/smarter-data.conf"
done
# Only the health gate may mark a slot good (a distribution's mark-good-on-boot unit would
# defeat it).
for u in rauc-mark-good.service; do ln -sf /dev/null "$tree/etc/systemd/system/$u"; done
# e2scrub_reap only removes LVM snapshots left by e2scrub; the gateway has no LVM, and the unit
# costs each boot about 6 s under emulation.
ln -sf /dev/null "$tree/etc/systemd/system/e2scrub_reap.service"
# The uplink by DHCP (systemd-networkd; Debian ships it disabled).
install_file 0644 "$HERE/files/80-smarter-wired.network" /etc/systemd/network/80-smarter-wired.network
mkdir -p "$tree/etc/systemd/system/sockets.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.service "$tree/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-networkd.socket "$tree/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
ln -sf /lib/systemd/system/systemd-networkd.service "$tree/etc/systemd/system/dbus-org.freedesktop.network1.service"
# The name server of QEMU's user network (mmdebstrap left the build host's here). Apps do not
# use it directly: smarter-dns forwards to it.
printf 'nameserver 10.0.2.3\n' > "$tree/etc/resolv.conf"
install_file 0644 "$HERE/files/autologin.conf" /etc/systemd/system/serial-getty@hvc0.service.d/autologin.conf
# systemd's getty generator runs before udev loads virtio_console, so it never sees hvc0: udev
# starts the getty when the console appears (run.sh and the tests always give QEMU one).
install_file 0644 "$HERE/files/90-smarter-hvc0.rules" /etc/udev/rules.d/90-smarter-hvc0.rules
install_file 0644 "$HERE/files/smarter-data.conf" /usr/lib/tmpfiles.d/smarter-data.conf
install_file 0755 "$HERE/files/load-images" /usr/lib/smarter/load-images
[ -n "$variant" ] || install_file 0644 "$images_tar" /usr/share/smarter/images/smarter-images-arm64.tar

# --- RAUC
install_file 0644 "$HERE/files/smarter-rauc-nbd.conf" /etc/modules-load.d/smarter-rauc-nbd.conf
install_file 0644 images/rauc/qemuarm64/system.conf /etc/rauc/system.conf
install_file 0644 "$keyring" /etc/rauc/keyring.pem
install_file 0755 images/rauc/rauc-boot-env /usr/lib/smarter/rauc-boot-env

# --- read-only root: state goes to /data (symlinks) or tmpfs
for p in /etc/rancher /etc/cni /opt/cni /var/lib/docker /var/lib/containerd /var/lib/rancher \
    /var/lib/kubelet /var/lib/smarter; do
    rm -rf "$tree$p"
    mkdir -p "$(dirname "$tree$p")"
    ln -s "/data$p" "$tree$p"
done
mkdir -p "$tree/data" "$tree/boot"
# The kernel gzip-compressed, which boot.scr loads (booti decompresses it): mkfs.ext4 -d turns
# the Image's zero blocks into holes, so the plain file has dozens of extents and an extent
# tree that U-Boot's ext4 driver walks again for every block (12 s per boot under TCG, at
# 2.6 MiB/s); the compressed file is one extent, read in well under a second.
kernel=$(readlink "$tree/vmlinuz")
gzip -n -9 -c "$tree/$kernel" > "$tree/$kernel.gz"
touch -r "$tree/$kernel" "$tree/$kernel.gz"
rm "$tree/$kernel"
ln -sfn "$kernel.gz" "$tree/vmlinuz.gz"
rm -f "$tree/vmlinuz" "$tree/vmlinuz.old"
cat > "$tree/etc/fstab" <<EOT
# / is mounted read-only (kernel command line "ro"); /boot and /data are boot.mount and data.mount.
tmpfs /tmp tmpfs mode=1777,nosuid,nodev,size=64m 0 0
tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev,size=16m 0 0
# systemd's own state (logind's linger directory, timers' stamps); not kept across boots
tmpfs /var/lib/systemd tmpfs mode=0755,nosuid,nodev,size=8m 0 0
EOT
mkdir -p "$tree/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$tree/etc/systemd/journald.conf.d/smarter.conf"
# Provisioning writes the node name to /data/etc/hostname; until then systemd uses its default.
rm -f "$tree/etc/hostname"; ln -s /data/etc/hostname "$tree/etc/hostname"
: > "$tree/etc/machine-id"
chroot "$tree" passwd -d root >/dev/null
# Docker writes its identity key next to daemon.json unless told otherwise: /etc is read-only.
printf '{\n  "data-root": "/data/var/lib/docker",\n  "deprecated-key-path": "/data/etc/docker/key.json",\n  "log-driver": "journald"\n}\n' > "$tree/etc/docker/daemon.json"
cat > "$tree/etc/smarter-release" <<EOT
NAME=SMARTER emulated gateway
VERSION=$version
COMPATIBLE=$COMPATIBLE
EOT

if [ -n "$variant" ]; then
    "$modify" "$tree"
fi

# --- root slot image (ext4, sized to its contents + 20 %, at most the slot)
find "$tree" -xdev -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
used_kib=$(du -sk --apparent-size "$tree" | cut -f1)
inodes=$(find "$tree" -xdev | wc -l)
# 4 KiB blocks: each file's tail rounds up to a block (inodes * 4 KiB bounds it); 10 % and
# 32 MiB (the journal, inode tables) on top. The root is read-only, so free space is of no use,
# and every 4 KiB of it costs 32 bytes in the block-hash index each adaptive update fetches.
fs_mib=$(( (used_kib * 11 / 10 + inodes * 4 + 32 * 1024) / 1024 ))
if [ "$fs_mib" -gt "$SLOT_MIB" ]; then
    echo "build.sh: root file system needs ${fs_mib} MiB, the slot has ${SLOT_MIB} MiB" >&2; exit 1
fi
name=${variant:-rootfs}
slot_img=$stage/$name.ext4
fixed_uuid=5e7a47e2-0000-4000-8000-000000000001
# -b 4096: mke2fs picks 1 KiB blocks for a file system this small, and then a file's data need
# not start on a 4 KiB boundary. RAUC's adaptive update (block-hash-index) finds what a slot
# already holds by the hashes of its 4 KiB chunks, so with 1 KiB blocks a file that moved by a
# few blocks (another file grew) matched nothing, and a release that changed only our services
# moved most of the bundle. With 4 KiB blocks every file starts on a chunk boundary.
mkfs.ext4 -q -b 4096 -L rootfs -U "$fixed_uuid" -E "hash_seed=$fixed_uuid,root_owner=0:0,lazy_itable_init=0,nodiscard" \
    -N $((inodes + 4096)) -d "$tree" "$slot_img" "${fs_mib}M"
# mkfs.ext4 -d copies each file's ctime from the staging tree (the time of extraction): set them all.
( cd "$tree" && find . -mindepth 1 -xdev -printf '%P\n' ) |
    awk -v t="$SOURCE_DATE_EPOCH" 'BEGIN { print "sif / ctime @" t } { gsub(/"/, "\\\""); printf "sif \"/%s\" ctime @%s\n", $0, t }' \
    > "$stage/ctime.cmds"
debugfs -w -f "$stage/ctime.cmds" "$slot_img" >/dev/null 2>"$stage/debugfs.err" ||
    { cat "$stage/debugfs.err" >&2; exit 1; }
e2fsck -fn "$slot_img" >/dev/null

if [ -n "$variant" ]; then
    mkdir -p "$out/variants"
    cp "$slot_img" "$out/variants/$name.ext4"
    "$ROOT/images/rauc/make-bundle.sh" --compatible "$COMPATIBLE" --version "$version-$variant" \
        --description "SMARTER emulated gateway ($variant)" --rootfs "$slot_img" \
        --cert "$cert" --key "$key" "$out/variants/$name.raucb" >/dev/null
    echo "build.sh: $out/variants/$name.raucb"
    exit 0
fi

# --- boot partition (FAT): boot.scr and the boot-slot state
mkimage -A arm64 -O linux -T script -C none -n "SMARTER emulated gateway" \
    -d images/boot/boot-emulated.cmd "$stage/boot.scr" >/dev/null
printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' > "$stage/smarter-env.txt"
touch -d "@$SOURCE_DATE_EPOCH" "$stage/boot.scr" "$stage/smarter-env.txt"
boot_img=$stage/boot.vfat
mkfs.vfat -C --invariant -i 534d5254 -n boot "$boot_img" $((BOOT_MIB * 1024)) >/dev/null 2>&1
MTOOLS_SKIP_CHECK=1 mcopy -m -i "$boot_img" "$stage/boot.scr" "$stage/smarter-env.txt" ::

# --- data partition (empty ext4; tmpfiles.d creates the directories at boot)
data_img=$stage/data.ext4
data_uuid=5e7a47e2-0000-4000-8000-000000000004
mkfs.ext4 -q -L data -U "$data_uuid" -E "hash_seed=$data_uuid,root_owner=0:0,nodiscard" "$data_img" "${DATA_MIB}M"

# --- disk: GPT with fixed identifiers, partitions copied in with dd (sparse)
disk=$stage/disk.img
start_a=$((1 + BOOT_MIB)); start_b=$((start_a + SLOT_MIB)); start_d=$((start_b + SLOT_MIB))
total=$((start_d + DATA_MIB + 1))
truncate -s "${total}M" "$disk"
sfdisk --quiet --no-reread --no-tell-kernel "$disk" <<EOT
label: gpt
label-id: 5E7A47E2-0000-4000-8000-0000000000D0
unit: sectors
first-lba: 2048
start=$((1 * 2048)), size=$((BOOT_MIB * 2048)), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=5E7A47E2-0000-4000-8000-0000000000B0, name="boot", attrs="LegacyBIOSBootable"
start=$((start_a * 2048)), size=$((SLOT_MIB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5E7A47E2-0000-4000-8000-0000000000A1, name="rootfs-a"
start=$((start_b * 2048)), size=$((SLOT_MIB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5E7A47E2-0000-4000-8000-0000000000A2, name="rootfs-b"
start=$((start_d * 2048)), size=$((DATA_MIB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5E7A47E2-0000-4000-8000-0000000000DA, name="data"
EOT
dd if="$boot_img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$slot_img" of="$disk" bs=1M seek="$start_a" conv=notrunc,sparse status=none
dd if="$data_img" of="$disk" bs=1M seek="$start_d" conv=notrunc,sparse status=none

# --- outputs
rm -f "$out"/disk.img "$out"/disk.img.bmap "$out"/rootfs.ext4 "$out"/update.raucb
bmaptool -q create -o "$out/disk.img.bmap" "$disk"
mv "$disk" "$out/disk.img"
mv "$slot_img" "$out/rootfs.ext4"
cp "$stage/boot.scr" "$out/boot.scr"
"$ROOT/images/rauc/make-bundle.sh" --compatible "$COMPATIBLE" --version "$version" \
    --description "SMARTER emulated gateway" --rootfs "$out/rootfs.ext4" \
    --cert "$cert" --key "$key" "$out/update.raucb" >/dev/null
( cd "$out" && sha256sum disk.img disk.img.bmap rootfs.ext4 boot.scr update.raucb > SHA256SUMS )
echo "build.sh: $out/disk.img ($(du -h --apparent-size "$out/disk.img" | cut -f1) apparent, $(du -h "$out/disk.img" | cut -f1) allocated), rootfs $(du -h --apparent-size "$out/rootfs.ext4" | cut -f1), bundle $(du -h "$out/update.raucb" | cut -f1), version $version"
