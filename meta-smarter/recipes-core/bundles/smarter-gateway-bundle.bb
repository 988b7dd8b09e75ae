SUMMARY = "RAUC update bundle of smarter-gateway-image"
DESCRIPTION = "A signed verity bundle carrying the root filesystem slot of \
smarter-gateway-image. Signed with RAUC_KEY_FILE/RAUC_CERT_FILE (by default \
the development key generated at build time)."
HOMEPAGE = "https://github.com/smarter-project/smarter"
LICENSE = "MIT"

inherit bundle

RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_COMPATIBLE ?= "smarter-${MACHINE}"
RAUC_BUNDLE_VERSION ?= "${DISTRO_VERSION}"
RAUC_BUNDLE_BUILD = "${SOURCE_DATE_EPOCH}"
RAUC_BUNDLE_SLOTS ?= "rootfs"
RAUC_SLOT_rootfs ?= "smarter-gateway-image"
RAUC_SLOT_rootfs[fstype] ?= "ext4"
RAUC_SLOT_rootfs[adaptive] ?= "block-hash-index"

SMARTER_RAUC_DEVKEYS = "${STAGING_DIR_NATIVE}${datadir_native}/smarter-rauc-devkeys"
RAUC_KEY_FILE ?= "${SMARTER_RAUC_DEVKEYS}/development-1.key.pem"
RAUC_CERT_FILE ?= "${SMARTER_RAUC_DEVKEYS}/development-1.cert.pem"
RAUC_KEYRING_FILE ?= "${SMARTER_RAUC_DEVKEYS}/ca.cert.pem"
DEPENDS += "smarter-rauc-devkeys-native"
