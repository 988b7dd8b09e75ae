# RAUC's system.conf is the board's file from images/rauc/ of this repository
# (one source of truth with the emulated gateway); the keyring is the CA the
# bundles are signed under (by default the build-time development CA).
inherit smarter-source

SMARTER_RAUC_BOARD ??= "${MACHINE}"
SMARTER_RAUC_DEVKEYS = "${STAGING_DIR_NATIVE}${datadir_native}/smarter-rauc-devkeys"
RAUC_KEYRING_FILE ?= "${SMARTER_RAUC_DEVKEYS}/ca.cert.pem"
# The keyring is a path, not something to fetch.
RAUC_KEYRING_URI = ""
SRC_URI:remove = "file://system.conf"
DEPENDS += "smarter-rauc-devkeys-native"
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_install() {
    install -d ${D}${nonarch_libdir}/rauc
    install -m 0644 ${SMARTER_TREE}/images/rauc/${SMARTER_RAUC_BOARD}/system.conf ${D}${nonarch_libdir}/rauc/system.conf
    install -m 0644 ${RAUC_KEYRING_FILE} ${D}${nonarch_libdir}/rauc/$(basename ${RAUC_KEYRING_FILE})
}
