SUMMARY = "Development signing key and CA for SMARTER RAUC bundles"
DESCRIPTION = "Generates, at build time, a throw-away CA and a signing key \
and certificate so that a build without your own PKI still produces signed \
bundles and a matching keyring. Never use these for devices in the field: \
set RAUC_KEY_FILE, RAUC_CERT_FILE and RAUC_KEYRING_FILE to your own."
HOMEPAGE = "https://github.com/smarter-project/smarter"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

DEPENDS = "openssl-native"
INHIBIT_DEFAULT_DEPS = "1"

inherit native

SMARTER_RAUC_DEVKEY_SUBJECT ??= "/O=SMARTER development/CN=SMARTER development"

do_configure[noexec] = "1"
do_compile() {
    openssl req -x509 -newkey rsa:4096 -nodes -days 3650 \
        -keyout ${B}/ca.key.pem -out ${B}/ca.cert.pem -subj "${SMARTER_RAUC_DEVKEY_SUBJECT} CA"
    openssl req -newkey rsa:4096 -nodes -keyout ${B}/development-1.key.pem \
        -out ${B}/development-1.csr.pem -subj "${SMARTER_RAUC_DEVKEY_SUBJECT} signing"
    openssl x509 -req -in ${B}/development-1.csr.pem -CA ${B}/ca.cert.pem -CAkey ${B}/ca.key.pem \
        -CAcreateserial -days 3650 -out ${B}/development-1.cert.pem
}
do_install() {
    install -d ${D}${datadir}/smarter-rauc-devkeys
    install -m 0644 ${B}/ca.cert.pem ${B}/development-1.cert.pem ${D}${datadir}/smarter-rauc-devkeys/
    install -m 0600 ${B}/development-1.key.pem ${D}${datadir}/smarter-rauc-devkeys/
}
