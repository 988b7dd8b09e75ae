# SMARTER boot script for the emulated gateway (QEMU virt, Debian's qemu_arm64 U-Boot).
# Compiled to boot.scr (mkimage -T script) on the boot FAT, where distro_bootcmd finds it.
#
# Boot counting: BOOT_ORDER lists the slots to try, first = primary; BOOT_<slot>_LEFT is how many
# more boots that slot gets. Each boot takes the first slot in BOOT_ORDER with boots left and
# spends one; RAUC's mark-good (health gate) gives it all its boots back, mark-bad removes it.
# A slot that never comes up healthy therefore runs out after 3 boots and the next slot boots.
# This U-Boot cannot store its environment (QEMU pflash writes fail), so the counters live in
# smarter-env.txt on this FAT as "name=value" lines, read with env import and written with
# fatwrite; Linux edits the same file through RAUC's custom backend (/usr/lib/smarter/rauc-boot-env).

setenv smarter_env_addr 0x4ff00000
setenv BOOT_ORDER "A B"
setenv BOOT_A_LEFT 3
setenv BOOT_B_LEFT 3
if load virtio 0:1 ${smarter_env_addr} smarter-env.txt; then
    env import -t ${smarter_env_addr} ${filesize}
else
    echo "smarter: no smarter-env.txt on the boot partition, starting from BOOT_ORDER=${BOOT_ORDER}"
fi

setenv smarter_slot
for s in ${BOOT_ORDER}; do
    if test -z "${smarter_slot}"; then
        if test "${s}" = "A" && test ${BOOT_A_LEFT} -gt 0; then
            setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
            setenv smarter_slot A
            setenv smarter_rootpart 2
        elif test "${s}" = "B" && test ${BOOT_B_LEFT} -gt 0; then
            setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
            setenv smarter_slot B
            setenv smarter_rootpart 3
        fi
    fi
done

if test -z "${smarter_slot}"; then
    # Every slot failed three times in a row: give them all their boots back rather than
    # stopping here for good (a power cut during a boot is not a broken slot).
    echo "smarter: no slot has boots left; resetting the counters"
    setenv BOOT_ORDER "A B"
    setenv BOOT_A_LEFT 3
    setenv BOOT_B_LEFT 3
    env export -t ${smarter_env_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
    fatwrite virtio 0:1 ${smarter_env_addr} smarter-env.txt ${filesize}
    reset
fi

echo "smarter: booting slot ${smarter_slot} (BOOT_ORDER=${BOOT_ORDER} A_LEFT=${BOOT_A_LEFT} B_LEFT=${BOOT_B_LEFT})"
env export -t ${smarter_env_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fatwrite virtio 0:1 ${smarter_env_addr} smarter-env.txt ${filesize}

# The kernel is gzip-compressed (images/emulated/build.sh says why): booti copies it to
# kernel_comp_addr_r and decompresses it to kernel_addr_r (below the initramfs).
load virtio 0:${smarter_rootpart} ${kernel_addr_r} /vmlinuz.gz
setenv kernel_comp_addr_r 0x48000000
setenv kernel_comp_size ${filesize}
load virtio 0:${smarter_rootpart} ${ramdisk_addr_r} /initrd.img
setenv smarter_initrd_size ${filesize}
# apparmor=0: Debian's kernel enables AppArmor, but the image has no apparmor_parser for Docker's
# default profile (containers would not start).
setenv bootargs "console=ttyAMA0 root=/dev/vda${smarter_rootpart} rootfstype=ext4 rootwait ro panic=5 apparmor=0 rauc.slot=${smarter_slot} ${smarter_extra_args}"
booti ${kernel_addr_r} ${ramdisk_addr_r}:${smarter_initrd_size} ${fdtcontroladdr}
echo "smarter: booting slot ${smarter_slot} failed"
reset
