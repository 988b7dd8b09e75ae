# SMARTER boot script for Raspberry Pi 4 with U-Boot (RPI_USE_U_BOOT = "1"), compiled to boot.scr.
#
# Same boot counting as every U-Boot board: BOOT_ORDER lists the slots, first = primary;
# BOOT_<slot>_LEFT counts the boots a slot has left. The first slot with boots left is booted
# and spends one; RAUC's mark-good (after the health gate) refills it, mark-bad removes the
# slot from BOOT_ORDER. The environment is uboot.env on the boot FAT (saveenv), which RAUC's
# uboot backend edits with fw_setenv (images/rauc/raspberrypi4-64/fw_env.config).
# The kernel comes from the booted slot (/boot/Image); the firmware passes the device tree
# at ${fdt_addr}.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

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
    echo "smarter: no slot has boots left; resetting the counters"
    setenv BOOT_ORDER "A B"
    setenv BOOT_A_LEFT 3
    setenv BOOT_B_LEFT 3
    saveenv
    reset
fi

echo "smarter: booting slot ${smarter_slot} (BOOT_ORDER=${BOOT_ORDER} A_LEFT=${BOOT_A_LEFT} B_LEFT=${BOOT_B_LEFT})"
saveenv

load ${devtype} ${devnum}:${smarter_rootpart} ${kernel_addr_r} /boot/Image
setenv bootargs "8250.nr_uarts=1 console=ttyS0,115200 root=/dev/mmcblk0p${smarter_rootpart} rootfstype=ext4 rootwait ro panic=5 rauc.slot=${smarter_slot}"
booti ${kernel_addr_r} - ${fdt_addr}
echo "smarter: booting slot ${smarter_slot} failed"
reset
