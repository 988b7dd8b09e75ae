# meta-smarter's RAUC configuration for meta-rauc's rauc-conf recipe
# (inherited by recipes-bsp/rauc/rauc-conf.bbappend only when the "smarter"
# distro override is active).
#
# RAUC's system.conf is the board's file from images/rauc/<board>/ of this
# repository (one source of truth with the emulated gateway), with the boot
# backend it names and, for U-Boot boards, fw_env.config; the keyring is the
# CA the bundles are signed under (by default the build-time development CA).
inherit smarter_source

# Which images/rauc/<board>/ to use (set per machine by the kas files).
SMARTER_RAUC_BOARD ??= "${MACHINE}"
SMARTER_RAUC_DEVKEYS = "${STAGING_DIR_NATIVE}${datadir_native}/smarter-rauc-devkeys"
RAUC_KEYRING_FILE ?= "${SMARTER_RAUC_DEVKEYS}/ca.cert.pem"
DEPENDS += "smarter-rauc-devkeys-native"
# The keyring is a path, not something to fetch.
RAUC_KEYRING_URI = ""
SRC_URI:remove = "file://system.conf"
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_install() {
    board=${SMARTER_TREE}/images/rauc/${SMARTER_RAUC_BOARD}
    [ -f $board/system.conf ] || bbfatal "no images/rauc/${SMARTER_RAUC_BOARD}/system.conf (set SMARTER_RAUC_BOARD)"
    install -d ${D}${sysconfdir}/rauc ${D}${nonarch_libdir}/smarter
    install -m 0644 $board/system.conf ${D}${sysconfdir}/rauc/system.conf
    install -m 0644 ${RAUC_KEYRING_FILE} ${D}${sysconfdir}/rauc/keyring.pem
    if [ -f $board/fw_env.config ]; then
        install -m 0644 $board/fw_env.config ${D}${sysconfdir}/fw_env.config
    fi
    for backend in rauc-boot-env rauc-nvbootctrl; do
        if grep -q "/$backend\$" $board/system.conf; then
            install -m 0755 ${SMARTER_TREE}/images/rauc/$backend ${D}${nonarch_libdir}/smarter/$backend
        fi
    done
}

FILES:${PN} += "${sysconfdir}/rauc ${sysconfdir}/fw_env.config ${nonarch_libdir}/smarter"
CONFFILES:${PN} += "${sysconfdir}/rauc/system.conf"
# RAUC's uboot backend calls fw_printenv/fw_setenv.
RDEPENDS:${PN}:append = " ${@'libubootenv-bin' if d.getVar('SMARTER_RAUC_BOOTLOADER') == 'uboot' else ''}"
SMARTER_RAUC_BOOTLOADER ??= ""
