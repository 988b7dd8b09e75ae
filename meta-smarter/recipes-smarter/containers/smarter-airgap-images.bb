SUMMARY = "SMARTER DaemonSet images in k3s's air-gap directory"
DESCRIPTION = "The OCI archives of the smarter-*-container images, installed \
read-only under /usr/share/smarter/airgap and linked into \
/var/lib/rancher/k3s/agent/images/ at boot, so k3s imports them on first \
start and the gateway pulls nothing."
HOMEPAGE = "https://github.com/smarter-project/smarter"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

INHIBIT_DEFAULT_DEPS = "1"
DEPENDS = "jq-native"
# The archives are built for this machine's architecture.
PACKAGE_ARCH = "${MACHINE_ARCH}"

SMARTER_AIRGAP_IMAGES ??= "device-manager cni dns debug-agent"
SMARTER_IMAGE_REPO ??= "ghcr.io/smarter-project"
SMARTER_IMAGE_VERSION ??= "0.1.0"

do_install[depends] += "${@' '.join('smarter-%s-container:do_image_complete' % i for i in d.getVar('SMARTER_AIRGAP_IMAGES').split())}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/smarter/airgap ${D}${nonarch_libdir}/tmpfiles.d
    : > ${D}${nonarch_libdir}/tmpfiles.d/smarter-airgap.conf
    for i in ${SMARTER_AIRGAP_IMAGES}; do
        src=${DEPLOY_DIR_IMAGE}/smarter-$i-container-${MACHINE}-${SMARTER_IMAGE_VERSION}-oci.tar
        if [ ! -e "$src" ]; then
            src=$(ls ${DEPLOY_DIR_IMAGE}/smarter-$i-container-*${SMARTER_IMAGE_VERSION}-oci.tar | head -n 1)
        fi
        [ -e "$src" ] || bbfatal "no OCI archive for smarter-$i-container in ${DEPLOY_DIR_IMAGE}"
        # containerd names an imported image after the index's
        # io.containerd.image.name annotation: give it the full name the
        # DaemonSet asks for (the class only sets the bare tag).
        rm -rf ${B}/$i && install -d ${B}/$i && tar -xf "$src" -C ${B}/$i
        jq --arg n "${SMARTER_IMAGE_REPO}/smarter-$i:${SMARTER_IMAGE_VERSION}" \
            '.manifests |= map(.annotations["io.containerd.image.name"] = $n)' \
            ${B}/$i/index.json > ${B}/$i/index.json.new
        mv ${B}/$i/index.json.new ${B}/$i/index.json
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@${SOURCE_DATE_EPOCH} \
            -cf ${D}${datadir}/smarter/airgap/smarter-$i.tar -C ${B}/$i .
        echo "L /var/lib/rancher/k3s/agent/images/smarter-$i.tar - - - - ${datadir}/smarter/airgap/smarter-$i.tar" \
            >> ${D}${nonarch_libdir}/tmpfiles.d/smarter-airgap.conf
    done
}

FILES:${PN} = "${datadir}/smarter/airgap ${nonarch_libdir}/tmpfiles.d/smarter-airgap.conf"
RDEPENDS:${PN} = "k3s-agent"
