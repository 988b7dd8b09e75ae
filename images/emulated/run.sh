#!/usr/bin/env bash
# Boot the emulated gateway in QEMU for a person to log in and look around.
#
#   images/emulated/run.sh [--snapshot] [--shell] [DISK]      (default DISK: out/emulated/disk.img)
#
# The serial console is this terminal: U-Boot, the kernel, then a login prompt (user root, no
# password: a development image). Quit QEMU with Ctrl-a x. --snapshot discards every write
# when QEMU exits (the disk stays as built); without it, updates and /data persist in DISK.
# A root shell is also on the virtio console, at the socket shell.sock next to DISK
# (--shell prints the socat command that attaches to it). User networking: the gateway reaches the
# host's network through QEMU (NAT) and forwards host port 2222 to its port 2222.
# Bundles: copy one into the FAT, e.g. on the gateway `rauc install /boot/update.raucb` after
# `mcopy -i DISK@@1M out/emulated/update.raucb ::` while QEMU is stopped, or mount a host
# directory: QEMU exports out/emulated as 9p tag "host" (mount -t 9p -o trans=virtio host /mnt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
snapshot= shell=
disk=$ROOT/out/emulated/disk.img
while [ $# -gt 0 ]; do
    case $1 in
        --snapshot) snapshot=on; shift ;;
        --shell) shell=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) disk=$1; shift ;;
    esac
done
[ -f "$disk" ] || { echo "run.sh: $disk not found: build it with ./dev release (or images/emulated/build.sh)" >&2; exit 1; }
uboot=/usr/lib/u-boot/qemu_arm64/u-boot.bin
[ -f "$uboot" ] || { echo "run.sh: $uboot missing (Debian package u-boot-qemu)" >&2; exit 1; }
command -v qemu-system-aarch64 >/dev/null || { echo "run.sh: qemu-system-aarch64 missing (qemu-system-arm)" >&2; exit 1; }
# pauth-impdef: TCG emulates the pointer authentication Debian's kernel and libraries use on
# every function call; QEMU's implementation-defined algorithm is about four times faster to
# emulate than the architected one (QARMA), and the guest cannot tell them apart.
args=(-M virt -cpu max,pauth-impdef=on -smp 2 -m 1024 -nographic -bios "$uboot"
    -drive "if=none,file=$disk,format=raw,id=hd0${snapshot:+,snapshot=on}" -device virtio-blk-device,drive=hd0
    -netdev user,id=net0,hostfwd=tcp::2222-:2222 -device virtio-net-device,netdev=net0
    -fsdev "local,id=host,path=$(dirname "$disk"),security_model=none,readonly=on"
    -device virtio-9p-device,fsdev=host,mount_tag=host)
# The virtio console (hvc0, a root shell) always exists; --shell says where to reach it.
args+=(-device virtio-serial-device -chardev "socket,id=shell,path=$(dirname "$disk")/shell.sock,server=on,wait=off"
    -device virtconsole,chardev=shell)
[ -z "$shell" ] || echo "run.sh: root shell: socat -,raw,echo=0 UNIX-CONNECT:$(dirname "$disk")/shell.sock" >&2
exec qemu-system-aarch64 "${args[@]}"
