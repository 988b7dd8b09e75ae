# SMARTER boot script for the Coral Dev Board (u-boot-coral, eMMC = mmc 0), compiled to boot.scr.
#
# Boot counting as on every U-Boot board (see boot-raspberrypi4.cmd): BOOT_ORDER, BOOT_<slot>_LEFT,
# decremented here, refilled by RAUC's mark-good, slot dropped by mark-bad. The environment is
# uboot.env on the boot FAT (saveenv; fw_setenv from Linux, images/rauc/coral-dev/fw_env.config).
# Kernel and device tree come from the booted slot's /boot.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3
test -n "${fdtfile}" || setenv fdtfile imx8mq-phanbell.dtb

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

load mmc 0:${smarter_rootpart} ${kernel_addr_r} /boot/Image
load mmc 0:${smarter_rootpart} ${fdt_addr_r} /boot/${fdtfile}
setenv bootargs "console=ttymxc0,115200 root=/dev/mmcblk0p${smarter_rootpart} rootfstype=ext4 rootwait ro panic=5 rauc.slot=${smarter_slot}"
booti ${kernel_addr_r} - ${fdt_addr_r}
echo "smarter: booting slot ${smarter_slot} failed"
reset
